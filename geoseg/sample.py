"""The built-in sample scene: a 512 x 512 crop of a Sentinel-2 scene (B02 B03 B04 B08).

Contains modified Copernicus Sentinel data 2017.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAMPLE_SCENE = Path(__file__).resolve().parent / "data" / "sample-s2-brandenburg.tif"


def sample_scene_path() -> Path:
    """Path of the sample scene that ships with geoseg."""
    return SAMPLE_SCENE


def run_demo(
    output_dir: str | Path = "demo-output", overwrite: bool = False, quiet: bool = False
) -> Any:
    """Segment the sample scene with the built-in model into ``output_dir``."""
    from geoseg.prediction import predict

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return predict(
        str(SAMPLE_SCENE),
        out / "sample-classes.tif",
        probabilities=out / "sample-probabilities.tif",
        overwrite=overwrite,
        quiet=quiet,
    )
