"""geoseg: seamless tiled semantic segmentation of large GeoTIFFs on Dask.

Importing geoseg does not import torch or dask; the public functions import them lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from geoseg.models.checkpoint import LoadedModel


def predict(scene: str, output: str, **options: Any) -> Any:
    """Segment ``scene`` into a class raster COG at ``output``; see :func:`geoseg.graph.predict`."""
    from geoseg.graph import predict as _predict

    return _predict(scene, output, **options)


def load_model(name_or_path: str | None = None, device: str = "cpu") -> "LoadedModel":
    """Load a geoseg model by registry file name or path; ``None`` gives the built-in model."""
    from geoseg.models.checkpoint import load_model as _load

    return _load(name_or_path, device=device)


def sample_scene() -> str:
    """Path of the built-in sample scene (a Sentinel-2 crop that ships with geoseg)."""
    from geoseg.sample import sample_scene_path

    return str(sample_scene_path())


__all__ = ["__version__", "predict", "load_model", "sample_scene"]
