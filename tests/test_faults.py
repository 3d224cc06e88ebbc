"""Faults inside a run: a corrupt block, CUDA out of memory, and what the user gets."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import from_origin

import geoseg
from geoseg.cli.main import cli
from geoseg.errors import TileError
from tests.conftest import random_scene


def scene_with_corrupt_block(path: Path, block: tuple[int, int] = (1, 2)) -> Path:
    """A DEFLATE GeoTIFF with 32-px blocks whose block (row, col) holds garbage bytes."""
    arr = random_scene(np.random.default_rng(0), 3, 128, 160, "uint8")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=160,
        height=128,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(300000, 5800000, 10, 10),
        tiled=True,
        blockxsize=32,
        blockysize=32,
        compress="deflate",
        photometric="minisblack",
    ) as dst:
        dst.write(arr)
    row, col = block
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00garbage" * (size // 8))
    return path


def test_corrupt_block_fails_naming_scene_and_window_and_leaves_nothing(
    tmp_path: Path, model_factory: Callable[..., Path], dask_client: Any
) -> None:
    scene = scene_with_corrupt_block(tmp_path / "bad.tif")
    out = tmp_path / "out.tif"
    with pytest.raises(
        TileError, match=r"bad\.tif: tiles at rows \d+-\d+, columns \d+-\d+ failed"
    ) as err:
        geoseg.predict(
            str(scene),
            str(out),
            model=str(model_factory(in_channels=3)),
            tile=64,
            client=dask_client,
            tiles_per_task=1,
        )
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_on_error_skip_writes_nodata_there_and_reports_the_windows(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    model = model_factory(in_channels=3)
    scene = scene_with_corrupt_block(tmp_path / "bad.tif", block=(1, 2))
    out = tmp_path / "out.tif"
    res = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(out),
            "--model",
            str(model),
            "--tile",
            "64",
            "--on-error",
            "skip",
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "skipped window rows" in res.output
    report = json.loads(out.with_name("out.tif.skipped.json").read_text())
    assert report["scene"].endswith("bad.tif") and report["windows"]
    with rasterio.open(out) as src:
        classes = src.read(1)
    bad = np.zeros(classes.shape, bool)
    for w in report["windows"]:
        bad[w["row_off"] : w["row_off"] + w["height"], w["col_off"] : w["col_off"] + w["width"]] = (
            True
        )
        assert "failed" in w["error"]
    # the corrupt block (rows 32-64, columns 64-96) is covered; the rest was predicted
    assert bad[32:64, 64:96].all() and (classes[bad] == 255).all()
    assert (classes[~bad] != 255).all() and bad.mean() < 0.5


def test_cuda_out_of_memory_halves_the_batch_once_and_gives_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    model_factory: Callable[..., Path],
) -> None:
    import geoseg.prediction.worker_models
    from geoseg.engines.base import Engine
    from geoseg.models.checkpoint import file_sha256
    from geoseg.models.load import load_model
    from geoseg.prediction.plan import plan_tasks
    from geoseg.prediction.tasks import run_tile_task
    from geoseg.tiling import TileGrid, auto_margin
    from tests.conftest import write_raster

    model = model_factory(in_channels=3, seed=3)
    cfg = load_model(model).config
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(1), 3, 60, 200, "uint8")
    )
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    grid = TileGrid.create(60, 200, 2 * margin + 16, margin, cfg.output_stride)
    tasks = plan_tasks(
        grid, str(scene), [1, 2, 3], str(model), file_sha256(model), "cpu", 8, False, 16
    )
    expected = [r.classes for t in tasks for r in run_tile_task(t)]

    from geoseg.engines.onnx_cpu import CpuEngine
    from geoseg.engines.ort import OnnxEngine

    seen: list[int] = []

    def small_memory(real_run: Any) -> Any:
        def run(self: Engine, batch: np.ndarray, *args: Any) -> Any:
            seen.append(len(batch))
            if len(batch) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_run(self, batch, *args)

        return run

    # the engine the worker picks (ONNX Runtime on the CPU, without torch) and the others: all fail alike
    monkeypatch.setattr(CpuEngine, "run", small_memory(CpuEngine.run))
    monkeypatch.setattr(OnnxEngine, "run", small_memory(OnnxEngine.run))
    monkeypatch.setattr(Engine, "run", small_memory(Engine.run))
    monkeypatch.setattr(geoseg.prediction.worker_models, "_BATCH_LIMITS", {})
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        got = [r.classes for t in tasks for r in run_tile_task(t)]
    assert all((a == b).all() for a, b in zip(got, expected, strict=True))
    assert seen[:3] == [8, 4, 2] and max(seen[3:]) == 2
    assert (
        len([r for r in caplog.records if "out of memory" in r.getMessage()]) == 2
    )  # 8 -> 4, 4 -> 2
