"""COGs written byte by byte from compressed tiles (geoseg.raster.tiff, geoseg.raster.blocks): classic TIFF and
BigTIFF both read back in GDAL as the pixels given, with their overviews, tags and colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from geoseg.raster.blocks import (
    Encoding,
    RasterSpec,
    cog_tags,
    encode_tiles,
    overview_count,
    reduce2,
)
from geoseg.raster.tiff import read_ifds, write_cog


def write(path: Path, array: np.ndarray, spec: RasterSpec, bigtiff: bool) -> list[np.ndarray]:
    levels = [array]
    for _ in range(overview_count(array.shape[2], array.shape[1])):
        levels.append(reduce2(levels[-1], spec.reduction, spec.nodata))
    tiles = [encode_tiles(a, spec) for a in levels]
    tags = cog_tags(
        spec,
        array.shape[2],
        array.shape[1],
        crs="EPSG:32633",
        transform=from_origin(300000, 5800000, 10, 10),
        tags={"GEOSEG_MODEL": "m"},
        descriptions=[f"b{i}" for i in range(spec.count)],
        colormap={1: (200, 10, 10, 255), 2: (10, 200, 10, 255)} if spec.count == 1 else None,
    )
    with open(path, "wb") as f:
        write_cog(
            f,
            tags,
            [[len(t) for t in lv] for lv in tiles],
            lambda i, j: tiles[i][j],
            bigtiff=bigtiff,
        )
    return levels


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize(
    ("count", "dtype", "reduction", "nodata"),
    [(1, "uint8", "mode", 255), (3, "uint16", "average", None)],
)
def test_cog_from_tiles_reads_back_in_gdal(
    tmp_path: Path, bigtiff: bool, count: int, dtype: str, reduction: str, nodata: int | None
) -> None:
    rng = np.random.default_rng(3)
    array = rng.integers(1, 3 if count == 1 else 4000, size=(count, 1100, 1300)).astype(dtype)
    spec = RasterSpec("r", count, dtype, nodata, reduction, Encoding("zstd", 1, 2))  # type: ignore[arg-type]
    out = tmp_path / "c.tif"
    levels = write(out, array, spec, bigtiff)
    assert (out.read_bytes()[2:4] == b"+\0") == bigtiff
    assert len(read_ifds(out.read_bytes())) == 3
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (src.count, src.dtypes[0], src.nodata, src.crs.to_epsg()) == (
            count,
            dtype,
            nodata,
            32633,
        )
        assert src.tags()["GEOSEG_MODEL"] == "m" and src.descriptions[0] == "b0"
        np.testing.assert_array_equal(src.read(), array)
        assert src.overviews(1) == [2, 4]
        for level in levels[1:]:
            np.testing.assert_array_equal(src.read(out_shape=level.shape), level)
        if count == 1:
            assert src.colormap(1)[1] == (200, 10, 10, 255)
