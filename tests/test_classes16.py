"""Models with class values above 254 write uint16 class rasters (nodata 65535), named and coloured."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

import geoseg
from geoseg.classes import ClassInfo, class_raster_dtype
from geoseg.errors import CheckpointError
from geoseg.models import create_model
from geoseg.models.checkpoint import build_config, save_model
from geoseg.models.load import load_model
from tests.conftest import random_scene, write_raster

N = 300


def colour(v: int) -> tuple[int, int, int]:
    return (v % 256, (7 * v) % 256, (13 * v) % 256)


@pytest.fixture(scope="module")
def model300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-class model whose winning classes are all above 254 (low classes get a large
    negative bias), so a uint8 raster could not hold a single one of its answers."""
    torch.manual_seed(0)
    net = create_model("unet", 3, N, depth=2, base_width=8).eval()
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.mul_(8.0)
        head.bias[:255] -= 100.0
    classes = [ClassInfo(v, f"class {v}", colour(v)) for v in range(N)]
    cfg = build_config(
        net,
        "unet",
        {"depth": 2, "base_width": 8},
        ["r", "g", "b"],
        [128.0] * 3,
        [40.0] * 3,
        classes,
    )
    return save_model(tmp_path_factory.mktemp("m300") / "m300.pt", net, cfg)


def test_class_raster_dtype() -> None:
    assert class_raster_dtype([0, 1, 254]) == ("uint8", 255)
    assert class_raster_dtype([0, 255]) == ("uint16", 65535)
    assert class_raster_dtype(range(N)) == ("uint16", 65535)


def test_more_than_254_classes_write_uint16(
    tmp_path: Path, model300: Path, dask_client: Any, rng: np.random.Generator
) -> None:
    arr = random_scene(rng, 3, 48, 64, "uint8")
    arr[:, :8, :8] = 0
    scene = write_raster(tmp_path / "s.tif", arr, nodata=0)
    out, vec = tmp_path / "c.tif", tmp_path / "p.gpkg"
    geoseg.predict(str(scene), str(out), model=str(model300), client=dask_client, vector=str(vec))
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 65535
        c = src.read(1)
        cmap = src.colormap(1)
        tags = src.tags()
    assert (c[:8, :8] == 65535).all()
    valid = c[c != 65535]
    assert valid.size == 48 * 64 - 64 and valid.min() >= 255 and valid.max() < N
    assert len(np.unique(valid)) > 1
    for v in np.unique(valid)[:5]:
        assert cmap[int(v)][:3] == colour(int(v))
        assert tags[f"CLASS_{int(v)}"] == f"class {int(v)}"
    with sqlite3.connect(vec) as con:
        qml = con.execute("SELECT styleQML FROM layer_styles").fetchone()[0]
    assert 'value="299"' in qml


def test_class_values_are_checked(tmp_path: Path) -> None:
    net = create_model("unet", 3, 2, depth=2, base_width=8)
    for classes, needle in [
        ([ClassInfo(0, "a", (0, 0, 0)), ClassInfo(65535, "b", (0, 0, 0))], "0..65534"),
        ([ClassInfo(3, "a", (0, 0, 0)), ClassInfo(3, "b", (0, 0, 0))], "more than once"),
        ([ClassInfo(1, "a", (0, 0, 0)), ClassInfo(2, "b", (0, 300, 0))], "0..255"),
    ]:
        with pytest.raises(CheckpointError, match=needle):
            build_config(
                net,
                "unet",
                {"depth": 2, "base_width": 8},
                ["r", "g", "b"],
                [0.0] * 3,
                [1.0] * 3,
                classes,
            )
    assert load_model().config.classes  # the built-in model passes the same checks
