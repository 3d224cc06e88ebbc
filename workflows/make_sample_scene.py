"""Cut geoseg's built-in sample scene: one 512 x 512 crop of the Sentinel-2 scene in ../shared.

    python workflows/make_sample_scene.py ../shared/data/labeled/s2_brandenburg_osm/image.tif \
        geoseg/data/sample-s2-brandenburg.tif

Rows 256-767, columns 512-1023: all eight land-use classes occur there. Contains modified
Copernicus Sentinel data 2017.
"""

from __future__ import annotations

import sys

import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

WINDOW = Window(512, 256, 512, 512)


def main(src_path: str, dst_path: str) -> None:
    with rasterio.open(src_path) as src:
        data = src.read(window=WINDOW)
        profile = src.profile | {
            "width": WINDOW.width,
            "height": WINDOW.height,
            "transform": window_transform(WINDOW, src.transform),
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "predictor": 2,
        }
        descriptions = src.descriptions
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions, start=1):
            if d:
                dst.set_band_description(i, d)
        dst.update_tags(
            SOURCE="Sentinel-2 L1C 2017-02-16, bands B02 B03 B04 B08",
            ATTRIBUTION="Contains modified Copernicus Sentinel data 2017",
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
