"""The geoseg version (also in pyproject.toml), a leaf so any layer can record it without
importing the package root (which imports the public API)."""

__version__ = "0.1.0"
