"""geoseg: seamless tiled semantic segmentation of large GeoTIFFs on Dask.

Importing geoseg does not import torch or dask; the public functions import them lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geoseg.mapping import map  # noqa: E402,A004 - geoseg.map: many scenes, one seamless map

# geoseg.prediction (the package: plan, run, write) imports neither torch nor dask; the
# function is geoseg.predict, a different name, so ``geoseg.prediction.plan`` is never shadowed.
from geoseg.prediction import PredictResult, predict  # noqa: E402
from geoseg.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from geoseg.models.config import LoadedModel


def load_model(name_or_path: str | None = None, device: str = "cpu") -> "LoadedModel":
    """Load a geoseg model by registry file name or path; ``None`` gives the built-in model."""
    from geoseg.models.load import load_model as _load

    return _load(name_or_path, device=device)


def sample_scene() -> str:
    """Path of the built-in sample scene (a Sentinel-2 crop that ships with geoseg)."""
    from geoseg.sample import sample_scene_path

    return str(sample_scene_path())


__all__ = ["__version__", "PredictResult", "predict", "map", "load_model", "sample_scene"]
