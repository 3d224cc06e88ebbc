"""The rasters predict writes are Cloud-Optimized GeoTIFFs with the overviews GDAL's COG driver
would build itself (the sink builds them into its temporary file first, to save memory)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin
from rasterio.windows import Window

from geoseg.raster.read import SceneInfo
from geoseg.raster.sink import RasterSink, overview_factors


def cog_of(path: Path, array: np.ndarray, nodata: float | None, resampling: str) -> Path:
    """``array`` as a COG made by GDAL's COG driver alone, from a plain GeoTIFF."""
    plain = path.with_suffix(".plain.tif")
    with rasterio.open(
        plain,
        "w",
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype.name,
        nodata=nodata,
        crs="EPSG:32633",
        transform=from_origin(300000, 5800000, 10, 10),
    ) as dst:
        dst.write(array)
    rasterio.shutil.copy(
        plain, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, OVERVIEW_RESAMPLING=resampling
    )
    return path


@pytest.mark.parametrize(
    ("width", "height"), [(1025, 700), (1537, 10), (600, 2100), (512, 512), (3000, 520)]
)
def test_overview_levels_are_those_of_the_cog_driver(
    tmp_path: Path, width: int, height: int
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = cog_of(tmp_path / "c.tif", np.zeros((1, height, width), np.uint8), None, "MODE")
    with rasterio.open(path) as src:
        assert overview_factors(width, height) == src.overviews(1)


@pytest.mark.parametrize(
    ("count", "nodata", "resampling"), [(1, 255, "MODE"), (3, None, "AVERAGE")]
)
def test_sink_cog_has_the_cog_drivers_overviews(
    tmp_path: Path, count: int, nodata: int | None, resampling: str
) -> None:
    rng = np.random.default_rng(0)
    height, width = 1100, 1300
    array = rng.integers(1, 5, size=(count, height // 10 + 1, width // 10 + 1), dtype=np.uint8)
    array = np.kron(array, np.ones((1, 10, 10), np.uint8))[
        :, :height, :width
    ]  # patches, as classes are
    if nodata is not None:
        array[:, 200:300, 400:700] = nodata
    scene = SceneInfo(
        path="scene.tif",
        width=width,
        height=height,
        count=3,
        dtype="uint16",
        crs=rasterio.crs.CRS.from_epsg(32633),
        transform=from_origin(300000, 5800000, 10, 10),
        nodata=None,
        descriptions=(None,) * 3,
        block_shape=(512, 512),
        georeferenced=True,
    )
    out = tmp_path / "sink.tif"
    sink = RasterSink(out, scene, count, nodata, overview_resampling=resampling)
    for r0 in range(0, height, 416):  # in pieces, as tiles arrive
        for c0 in range(0, width, 416):
            w = Window(c0, r0, min(416, width - c0), min(416, height - r0))
            sink.write(array[:, r0 : r0 + int(w.height), c0 : c0 + int(w.width)], w)
    sink.commit()
    expected = cog_of(tmp_path / "driver.tif", array, nodata, resampling)
    with rasterio.open(out) as got, rasterio.open(expected) as want:
        assert got.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert got.overviews(1) == want.overviews(1) == [2, 4]
        np.testing.assert_array_equal(got.read(), array)
        for f in got.overviews(1):
            shape = (count, height // f, width // f)
            np.testing.assert_array_equal(got.read(out_shape=shape), want.read(out_shape=shape))
