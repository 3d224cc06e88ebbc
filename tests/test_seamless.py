"""The property predict rests on: stitched tiles equal one pass over the whole mirrored scene.

These run the very task function the Dask graph runs (:func:`geoseg.prediction.tasks.run_tile_task`) over
every tile group and compare with the network applied once to the numpy-reflect-padded scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoseg.engines.infer import normalize
from geoseg.models.checkpoint import file_sha256
from geoseg.models.load import load_model
from geoseg.prediction.plan import plan_tasks
from geoseg.prediction.tasks import run_tile_task
from geoseg.tiling import TileGrid, auto_margin, round_up
from tests.conftest import random_scene, write_raster


def stitched(
    scene: Path, model_path: Path, tile: int, per_task: int = 2, engine: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and class raster stitched from the tile tasks' results."""
    model = load_model(model_path)
    cfg = model.config
    with rasterio.open(scene) as src:
        h, w, count = src.height, src.width, src.count
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    grid = TileGrid.create(h, w, tile, margin, cfg.output_stride)
    tasks = plan_tasks(
        grid,
        str(scene),
        list(range(1, count + 1)),
        str(model_path),
        file_sha256(model_path),
        "cpu",
        3,
        False,
        per_task,
        keep_logits=True,
        engine=engine,
    )
    out = np.full((len(cfg.classes), h, w), np.nan, dtype=np.float32)
    classes = np.zeros((h, w), np.uint8)
    for task in tasks:
        for res in run_tile_task(task):
            win = res.core
            assert res.logits is not None
            rows = slice(win.row_off, win.row_off + win.height)
            cols = slice(win.col_off, win.col_off + win.width)
            out[:, rows, cols] = res.logits
            classes[rows, cols] = res.classes
    return out, classes


def stitched_logits(scene: Path, model_path: Path, tile: int, per_task: int = 2) -> np.ndarray:
    return stitched(scene, model_path, tile, per_task)[0]


def whole_scene_logits(scene: Path, model_path: Path) -> np.ndarray:
    model = load_model(model_path)
    cfg = model.config
    with rasterio.open(scene) as src:
        data = src.read()
    h, w = data.shape[1:]
    x = normalize(data, np.ones((h, w), bool), cfg.mean, cfg.std)
    s = cfg.output_stride
    pad = auto_margin(cfg.receptive_field, s)
    ph = round_up(h + 2 * pad, s) - h - pad
    pw = round_up(w + 2 * pad, s) - w - pad
    padded = np.pad(x, ((0, 0), (pad, ph), (pad, pw)), mode="reflect")
    with torch.inference_mode():
        logits = model.network(torch.from_numpy(padded)[None])[0].numpy()
    return logits[:, pad : pad + h, pad : pad + w]


def assert_same_prediction(a: np.ndarray, b: np.ndarray) -> None:
    assert not np.isnan(a).any(), "some pixels were never written"
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    top2 = np.sort(b, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 1e-3
    assert (a.argmax(0) == b.argmax(0))[decided].all()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    bands=st.integers(1, 4),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32", "float64"]),
    core_mult=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_tiled_logits_equal_whole_scene_inference(
    tmp_path: Path,
    model_factory: Callable[..., Path],
    height: int,
    width: int,
    bands: int,
    dtype: str,
    core_mult: int,
    seed: int,
) -> None:
    model_path = model_factory(in_channels=bands, dtype=dtype)
    cfg = load_model(model_path).config
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    tile = 2 * margin + core_mult * cfg.output_stride
    rng = np.random.default_rng(seed)
    scene = write_raster(
        tmp_path / f"s-{seed}-{height}-{width}.tif", random_scene(rng, bands, height, width, dtype)
    )
    assert_same_prediction(
        stitched_logits(scene, model_path, tile), whole_scene_logits(scene, model_path)
    )


def test_every_upsampling_method_tiles_seamlessly(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    rng = np.random.default_rng(7)
    scene = write_raster(tmp_path / "s.tif", random_scene(rng, 3, 75, 101, "uint8"))
    for method in ("transpose", "unpool", "bilinear"):
        model_path = model_factory(in_channels=3, upsample=method)
        cfg = load_model(model_path).config
        margin = auto_margin(cfg.receptive_field, cfg.output_stride)
        reference = whole_scene_logits(scene, model_path)
        for core in (cfg.output_stride, 3 * cfg.output_stride, 64):
            got = stitched_logits(scene, model_path, 2 * margin + core)
            assert_same_prediction(got, reference)


def test_class_raster_does_not_change_with_tile_under_any_engine(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    rng = np.random.default_rng(11)
    scene = write_raster(tmp_path / "s.tif", random_scene(rng, 3, 45, 61, "uint16"))
    model_path = model_factory(in_channels=3, dtype="uint16")
    cfg = load_model(model_path).config
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    reference = whole_scene_logits(scene, model_path)
    values = np.array([c.value for c in cfg.classes], np.uint8)
    for engine in ("torch", "onnx"):
        rasters = []
        for core in (3 * cfg.output_stride, 7 * cfg.output_stride):
            logits, classes = stitched(
                scene, model_path, 2 * margin + core, per_task=4, engine=engine
            )
            assert_same_prediction(logits, reference)
            assert (classes == values[logits.argmax(0)]).all()
            rasters.append(classes)
        assert (rasters[0] == rasters[1]).all(), engine
