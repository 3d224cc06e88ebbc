"""Error hierarchy: one root, each class also inheriting the builtin it resembles."""

from __future__ import annotations


class GeosegError(Exception):
    """Root of every error geoseg raises on purpose; its message is one line a user can act on."""


class SceneError(GeosegError, OSError):
    """A scene cannot be opened or read (missing, not a raster, corrupt window)."""


class OutputError(GeosegError, OSError):
    """The output path cannot be written (exists, directory missing, not writable)."""


class TilingError(GeosegError, ValueError):
    """Tile size, margin or stride do not fit together."""


class ModelError(GeosegError, ValueError):
    """Unknown model name, or a model that does not fit the scene."""


class CheckpointError(ModelError):
    """A model file that is not a geoseg model, or that would need code execution to load."""


class SchedulerError(GeosegError, ConnectionError):
    """The Dask scheduler cannot be reached, or was lost during a run."""


class FolderLockedError(GeosegError, RuntimeError):
    """Another live geoseg run holds the output folder's lock."""


class TileError(GeosegError, RuntimeError):
    """One tile task could not be read or inferred; the message names the scene and window."""


class ChipError(GeosegError, ValueError):
    """Labels or chips folder do not fit the request."""


class TrainingError(GeosegError, RuntimeError):
    """Training cannot start or continue."""


class EvaluationError(GeosegError, ValueError):
    """Prediction and reference cannot be compared."""


class GeosegWarning(UserWarning):
    """Something was done, but not quite as asked (for example a scene without a CRS)."""
