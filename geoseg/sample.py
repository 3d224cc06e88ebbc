"""The built-in sample scene: a 512 x 512 crop of a Sentinel-2 scene (B02 B03 B04 B08).

Contains modified Copernicus Sentinel data 2017.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_SCENE = Path(__file__).resolve().parent / "data" / "sample-s2-brandenburg.tif"


def sample_scene_path() -> Path:
    """Path of the sample scene that ships with geoseg."""
    return SAMPLE_SCENE
