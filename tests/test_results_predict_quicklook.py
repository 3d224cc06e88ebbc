"""``geoseg predict --quicklook``: a PNG of the committed class raster, in its class colours,
published with the user's umask; one line before any work when it exists."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image

import geoseg
from geoseg.errors import GeosegWarning, OutputError


def class_colours(raster: Path) -> set[tuple[int, int, int]]:
    """The colour-table colours of the classes a class raster holds."""
    with rasterio.open(raster) as src:
        values = np.unique(src.read(1))
        cmap = src.colormap(1)
        return {tuple(cmap[int(v)][:3]) for v in values if v != src.nodata}


def png_colours(png: Path) -> set[tuple[int, int, int]]:
    return {
        tuple(int(x) for x in c) for c in np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    }


def test_quicklook_beside_the_output_and_in_a_cells_folder(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=3, height=96, width=120)
    model = model_factory(in_channels=3)
    old = os.umask(0o027)
    try:
        out = tmp_path / "c.tif"
        geoseg.predict(
            str(scene), str(out), model=str(model), client=dask_client, tile=128, quicklook=True
        )
        cells = tmp_path / "cells"
        geoseg.predict(
            str(scene),
            str(cells),
            model=str(model),
            client=dask_client,
            tile=128,
            cells=512,
            quicklook=True,
        )
    finally:
        os.umask(old)
    png = tmp_path / "c.png"
    colours = class_colours(out)
    assert colours and colours <= png_colours(png)  # every class the raster holds, in its colour
    assert png.stat().st_mode & 0o777 == 0o640
    cells_png = cells / "quicklook.png"
    assert colours <= png_colours(cells_png)  # the mosaic of the cells: the same classes
    assert cells_png.stat().st_mode & 0o777 == 0o640
    # an existing quicklook is one line before any work, without --overwrite
    (tmp_path / "d.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="d.png.*--overwrite"):
        geoseg.predict(
            str(scene),
            str(tmp_path / "d.tif"),
            model=str(model),
            client=dask_client,
            tile=128,
            quicklook=True,
        )
    assert not (tmp_path / "d.tif").exists() and (tmp_path / "d.png").read_bytes() == b"mine"


def test_cli_flag_and_object_store_outputs(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
) -> None:
    from geoseg.cli.main import cli
    from geoseg.results.quicklook import output_quicklook

    scene = scene_factory(bands=3, height=64, width=64)
    model = model_factory(in_channels=3)
    out = tmp_path / "c.tif"
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(out),
            "--model",
            str(model),
            "--tile",
            "128",
            "--quicklook",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert class_colours(out) <= png_colours(tmp_path / "c.png")
    with pytest.warns(GeosegWarning, match="no quicklook for the object-store output"):
        assert output_quicklook("s3://bucket/c.tif", False, False) is None
