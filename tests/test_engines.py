"""Engines (PyTorch, ONNX Runtime) and ONNX models: same answers, exact tiling, clear refusals."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from geoseg.cli.main import cli
from geoseg.engines import resolve_engine
from geoseg.engines.infer import InferenceOptions, forward, normalize
from geoseg.errors import CheckpointError, ModelError
from geoseg.models.checkpoint import DATA_DIR, file_sha256
from geoseg.models.load import load_model
from geoseg.models.onnx import cache_dir
from geoseg.prediction.plan import plan_tasks
from geoseg.prediction.tasks import run_tile_task
from geoseg.prediction.worker_models import worker_engine
from geoseg.tiling import TileGrid, auto_margin
from tests.conftest import random_scene, write_raster
from tests.test_seamless import stitched

SAMPLE = DATA_DIR / "sample-s2-brandenburg.tif"


def predict_in_process(
    scene: Path, model: Path, engine: str, tile: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Class raster and probabilities from the tile tasks, run in this process."""
    cfg = load_model(model).config
    with rasterio.open(scene) as src:
        h, w, count = src.height, src.width, src.count
    grid = TileGrid.create(
        h, w, tile, auto_margin(cfg.receptive_field, cfg.output_stride), cfg.output_stride
    )
    tasks = plan_tasks(
        grid,
        str(scene),
        list(range(1, count + 1)),
        str(model),
        file_sha256(model),
        "cpu",
        4,
        True,
        4,
        engine=engine,
    )
    classes = np.zeros((h, w), np.uint8)
    probs = np.zeros((len(cfg.classes), h, w), np.uint8)
    for task in tasks:
        for res in run_tile_task(task):
            win = res.core
            rows, cols = (
                slice(win.row_off, win.row_off + win.height),
                slice(win.col_off, win.col_off + win.width),
            )
            classes[rows, cols] = res.classes
            assert res.probabilities is not None
            probs[:, rows, cols] = res.probabilities
    return classes, probs


def test_engines_agree_on_the_sample_scene() -> None:
    model = DATA_DIR / "s2-landcover-unet.pt"
    c_torch, p_torch = predict_in_process(SAMPLE, model, "torch")
    c_onnx, p_onnx = predict_in_process(SAMPLE, model, "onnx")
    assert (c_torch == c_onnx).mean() >= 0.9999
    assert np.abs(p_torch.astype(int) - p_onnx).max() <= 2
    assert len(np.unique(c_torch)) > 3  # a real segmentation, not one class everywhere


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_engine_normalizes_fills_nodata_and_returns_uint8(
    engine: str, model_factory: Callable[..., Path]
) -> None:
    path = model_factory(in_channels=3, dtype="float32")
    model = load_model(path)
    cfg = model.config
    rng = np.random.default_rng(5)
    raw = np.stack([random_scene(rng, 3, 32, 40, "float32") for _ in range(2)])
    valid = rng.random((2, 32, 40)) > 0.2
    raw[0, 1, 3, 4] = np.nan
    valid[0, 3, 4] = False
    raw[:, :, ~valid.any(0)] = -9999.0
    eng = worker_engine(str(path), file_sha256(path), "cpu", engine, InferenceOptions())
    out = eng.run(raw, valid, probabilities=True, keep_logits=True)
    assert (
        out.classes.dtype == np.uint8
        and out.probabilities is not None
        and out.probabilities.dtype == np.uint8
    )
    values = np.array([c.value for c in cfg.classes], np.uint8)
    reference = forward(
        model.network,
        np.stack([normalize(r, v, cfg.mean, cfg.std) for r, v in zip(raw, valid)]),
        torch.device("cpu"),
    ).numpy()
    np.testing.assert_allclose(out.logits, reference, rtol=1e-4, atol=1e-4)
    assert (out.classes[valid] == values[reference.argmax(1)][valid]).mean() > 0.999
    assert (out.classes[~valid] == 255).all()
    assert (out.probabilities.transpose(0, 2, 3, 1)[~valid] == 0).all()
    sums = out.probabilities.sum(1, dtype=int)[valid]
    assert (np.abs(sums - 255) <= len(cfg.classes)).all()


def test_auto_engine_choice() -> None:
    plain = InferenceOptions()
    assert resolve_engine("auto", "torch", "cpu", plain) == "onnx"
    assert resolve_engine("auto", "torch", "cuda", plain) == "torch"
    assert resolve_engine("auto", "torch", "cpu", InferenceOptions(channels_last=True)) == "torch"
    assert resolve_engine("auto", "onnx", "cpu", InferenceOptions(tta="flip")) == "onnx"
    with pytest.raises(ModelError, match="--engine onnx or auto"):
        resolve_engine("torch", "onnx", "cpu", plain)
    with pytest.raises(ModelError, match="--compile .*--engine torch"):
        resolve_engine("onnx", "torch", "cpu", InferenceOptions(compile=True))


def test_engine_onnx_without_onnxruntime_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_factory: Callable[..., Path]
) -> None:
    import geoseg.engines

    monkeypatch.setattr(geoseg.engines, "onnxruntime_available", lambda: False)
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(0), 3, 20, 20, "uint8")
    )
    res = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(tmp_path / "c.tif"),
            "--engine",
            "onnx",
            "--model",
            str(model_factory(in_channels=3)),
        ],
    )
    assert res.exit_code != 0 and "pip install onnxruntime" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "c.tif").exists()
    assert resolve_engine("auto", "torch", "cpu", InferenceOptions()) == "torch"


def test_export_import_roundtrip_keeps_margins_exact(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    runner = CliRunner()
    pt = model_factory(in_channels=3, num_classes=3)
    cfg = load_model(pt).config
    exported = tmp_path / "m.onnx"
    res = runner.invoke(cli, ["export", str(pt), "-o", str(exported)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["models", str(exported)])
    assert (
        res.exit_code == 0
        and "onnx model" in res.output
        and f"RF radius {cfg.receptive_field}" in res.output
    )

    # The same network as someone else's ONNX file: no geoseg metadata.
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(3), 3, 40, 52, "uint8")
    )
    res = runner.invoke(
        cli, ["predict", str(scene), "-o", str(tmp_path / "c.tif"), "--model", str(foreign)]
    )
    assert (
        res.exit_code != 0
        and "geoseg import" in res.output
        and len(res.output.strip().splitlines()) == 1
    )
    assert not (tmp_path / "c.tif").exists()

    imported = tmp_path / "imported.onnx"
    res = runner.invoke(
        cli,
        [
            "import",
            str(foreign),
            "-o",
            str(imported),
            "--classes",
            "1=a,2=b,3=c",
            "--mean",
            ",".join(map(str, cfg.mean)),
            "--std",
            ",".join(map(str, cfg.std)),
            "--bands",
            "r,g,b",
        ],
    )
    assert res.exit_code == 0, res.output
    model = load_model(imported)
    assert model.format == "onnx" and model.in_bands == ["r", "g", "b"]
    assert model.output_stride == cfg.output_stride
    assert model.receptive_field == cfg.receptive_field  # same margin as the gradient measure

    margin = auto_margin(model.receptive_field, model.output_stride)
    reference = stitched(scene, pt, 2 * margin + 8 * cfg.output_stride, per_task=4, engine="torch")[
        1
    ]
    for core in (2, 5):
        _, classes = stitched(scene, imported, 2 * margin + core * model.output_stride, per_task=4)
        assert (classes == reference).all()


def _graph(path: Path, in_shape: list, out_shape: list, op: str = "Identity") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    model = helper.make_model(
        helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "in_shape, out_shape, classes, mean, message",
    [
        (["n", 3, "h"], ["n", 3, "h"], "1=a,2=b,3=c", "0,0,0", "rank 3"),
        (["n", 3, 64, 64], ["n", 3, 64, 64], "1=a,2=b,3=c", "0,0,0", "fixed at 64x64"),
        (["n", 3, "h", "w"], ["n", 3, "h"], "1=a,2=b,3=c", "0,0,0", "N x K x H x W"),
        (["n", 3, "h", "w"], ["n", 3, "h", "w"], "1=a,2=b", "0,0,0", "outputs 3 classes but 2"),
        (["n", 3, "h", "w"], ["n", 3, "h", "w"], "1=a,2=b,3=c", "0,0", "takes 3 channels"),
    ],
)
def test_import_refuses_what_cannot_be_tiled(
    tmp_path: Path, in_shape: list, out_shape: list, classes: str, mean: str, message: str
) -> None:
    src = _graph(tmp_path / "x.onnx", in_shape, out_shape)
    out = tmp_path / "out.onnx"
    std = ",".join("1" for _ in mean.split(","))
    res = CliRunner().invoke(
        cli,
        ["import", str(src), "-o", str(out), "--classes", classes, "--mean", mean, "--std", std],
    )
    assert res.exit_code != 0 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_onnx_summary_reads_what_the_onnx_package_reads(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    """The wire-format reader that spares predict the onnx import agrees with onnx on a real
    exported model (opset, metadata, inputs and outputs with their free and fixed dimensions,
    weights), flags weights kept outside the file, and refuses bytes that are no ONNX model in
    one line."""
    from geoseg.models.onnx_summary import read_summary

    exported = tmp_path / "m.onnx"
    assert (
        CliRunner()
        .invoke(cli, ["export", str(model_factory(in_channels=3)), "-o", str(exported)])
        .exit_code
        == 0
    )
    proto = onnx.load(str(exported))
    summary = read_summary(exported)
    assert summary.opset == next(
        o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")
    )
    assert (
        summary.metadata == {p.key: p.value for p in proto.metadata_props}
        and "geoseg" in summary.metadata
    )
    assert (
        summary.initializers == {t.name for t in proto.graph.initializer}
        and len(summary.initializers) > 4
    )
    for ours, theirs in zip(
        summary.inputs + summary.outputs, list(proto.graph.input) + list(proto.graph.output)
    ):
        dims = [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in theirs.type.tensor_type.shape.dim
        ]
        assert (ours.name, ours.elem_type, ours.dims) == (
            theirs.name,
            theirs.type.tensor_type.elem_type,
            dims,
        )
    assert not summary.external_weights

    fixed = read_summary(_graph(tmp_path / "fixed.onnx", [1, 3, 64, 64], [1, 2, 64, 64]))
    assert fixed.inputs[0].dims == [1, 3, 64, 64] and fixed.outputs[0].dims == [1, 2, 64, 64]

    external = tmp_path / "external.onnx"
    onnx.save(
        proto, str(external), save_as_external_data=True, size_threshold=0, location="external.bin"
    )
    assert read_summary(external).external_weights

    data = exported.read_bytes()
    for name, blob in (
        ("cut.onnx", data[: len(data) // 2]),
        ("zeros.onnx", bytes(64)),
        ("text.onnx", b"not a model\n" * 10),
        ("empty.onnx", b""),
    ):
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(CheckpointError, match="is not an ONNX model"):
            read_summary(bad)


def test_onnx_cache_is_private() -> None:
    mode = stat.S_IMODE(cache_dir().stat().st_mode)
    assert mode == 0o700


def test_tta_scales_and_crf_run_under_every_engine(model_factory: Callable[..., Path]) -> None:
    from geoseg.options import CRFParams

    path = model_factory(in_channels=3)
    options = InferenceOptions(tta="flip", scales=(0.5, 1.0), crf=CRFParams(iterations=1, radius=2))
    rng = np.random.default_rng(9)
    raw = np.stack([random_scene(rng, 3, 48, 64, "uint8") for _ in range(2)])
    valid = np.ones((2, 48, 64), bool)
    out = {
        e: worker_engine(str(path), file_sha256(path), "cpu", e, options).run(
            raw, valid, keep_logits=True
        )
        for e in ("torch", "onnx")
    }
    np.testing.assert_allclose(out["onnx"].logits, out["torch"].logits, rtol=1e-4, atol=1e-4)
    assert (out["onnx"].classes == out["torch"].classes).mean() > 0.999


def test_channel_argmax_equals_torch_argmax_ties_included() -> None:
    """The per-class pass that replaces ``argmax(1)`` keeps its answer, first index on ties."""
    import torch

    from geoseg.engines.base import channel_argmax

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 8, 70):
        s = torch.randint(-3, 3, (2, k, 17, 23), generator=g).float()  # small integers: many ties
        assert torch.equal(channel_argmax(s), s.argmax(1)), k


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_fused_graph_equals_the_torch_steps(dtype: str, model_factory: Callable[..., Path]) -> None:
    """The network extended to class values and uint8 probabilities in ONNX Runtime, fed by
    numpy's normalisation (the torch-free CPU engine, and the ONNX engine on the CPU), gives
    what the network's own graph between geoseg's torch steps gives: nodata, NaN and inf included."""
    from geoseg.engines.base import Engine
    from geoseg.engines.onnx_cpu import CpuEngine

    path = model_factory(in_channels=3, dtype=dtype)
    rng = np.random.default_rng(11)
    raw = np.stack([random_scene(rng, 3, 48, 40, dtype) for _ in range(3)])
    valid = rng.random((3, 48, 40)) > 0.15
    if dtype == "float32":
        raw[0, 1, :4, :4] = np.nan
        raw[1, 2, 5, :] = np.inf
    eng = worker_engine(str(path), file_sha256(path), "cpu", "onnx", InferenceOptions())
    assert isinstance(eng, CpuEngine)
    for mask in (valid, np.ones_like(valid)):  # batches with nodata and without: one graph
        fused = eng.run(raw, mask, probabilities=True)
        steps = Engine.run(eng.full(), raw, mask, probabilities=True)  # the torch steps
        assert eng.sessions.get(True) is not None
        assert fused.classes.dtype == steps.classes.dtype == np.uint8
        assert (fused.classes == steps.classes).mean() > 0.999
        assert (fused.classes[~mask] == 255).all() and len(np.unique(fused.classes[mask])) > 1
        assert fused.probabilities is not None and steps.probabilities is not None
        assert np.abs(fused.probabilities.astype(int) - steps.probabilities).max() <= 1
        assert (fused.probabilities.transpose(0, 2, 3, 1)[~mask] == 0).all()
        same = eng.full().run(raw, mask, probabilities=True)  # the ONNX engine's own CPU path
        assert np.array_equal(same.classes, fused.classes)


def test_models_older_than_opset_13_run_unfused(
    model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    import onnx

    from geoseg.engines.graph import MIN_OPSET
    from geoseg.engines.ort import OnnxEngine
    from geoseg.models.onnx import cached_onnx, read_onnx_model

    path = model_factory(in_channels=3)
    converted = cached_onnx(str(path), file_sha256(path))
    config, _ = read_onnx_model(converted)
    proto = onnx.load(str(converted))
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = MIN_OPSET - 1
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    eng = OnnxEngine(old, config, torch.device("cpu"), InferenceOptions(), cache_key="old-opset")
    raw = random_scene(np.random.default_rng(2), 3, 32, 32, "uint8")[None]
    valid = np.ones((1, 32, 32), bool)
    out = eng.run(raw, valid)
    assert eng.fused_session(False) is None
    fresh = worker_engine(str(path), file_sha256(path), "cpu", "onnx", InferenceOptions()).run(
        raw, valid
    )
    assert (out.classes == fresh.classes).mean() > 0.999


def test_cpu_batches_split_into_runs_give_the_whole_batch_answer(
    model_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the CPU a batch goes through ONNX Runtime in runs of a few tiles (bounded arena): the
    runs' classes, probabilities and logits, put back together, are those of one run."""
    from geoseg.engines import fused

    path = model_factory(in_channels=3)
    raw = np.stack([random_scene(np.random.default_rng(i), 3, 32, 32, "uint8") for i in range(5)])
    valid = np.ones((5, 32, 32), bool)
    valid[3, :5] = False
    eng = worker_engine(str(path), file_sha256(path), "cpu", "onnx", InferenceOptions())
    whole = [eng.run(raw, valid, probabilities=True), eng.run(raw, valid, keep_logits=True)]
    monkeypatch.setattr(fused, "CPU_RUN_PIXELS", 2 * 32 * 32)
    assert [(r.start, r.stop) for r in fused.cpu_runs(5, 32, 32)] == [(0, 2), (2, 4), (4, 5)]
    split = [eng.run(raw, valid, probabilities=True), eng.run(raw, valid, keep_logits=True)]
    for a, b in zip(whole, split):
        assert np.array_equal(a.classes, b.classes)
    assert np.array_equal(whole[0].probabilities, split[0].probabilities)
    assert np.allclose(whole[1].logits, split[1].logits, atol=1e-5)


def test_cpu_predict_from_a_converted_model_imports_no_torch(
    tmp_path: Path,
    model_factory: Callable[..., Path],
) -> None:
    """Once a ``.pt`` model is converted (its first ONNX Runtime run), predict on the CPU plans
    and runs without importing torch (a second and ~500 MB per process), and from its second run
    on, with the fused graph cached, without the onnx package either (0.45 s); it writes the
    classes the same tiles give in this process."""
    import subprocess
    import sys

    from geoseg.models.onnx import cached_onnx

    model = model_factory(in_channels=3, seed=21)
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(4), 3, 150, 130, "uint8")
    )
    cached_onnx(str(model), file_sha256(model))
    code = (
        "import sys, geoseg\n"
        f"geoseg.predict({str(scene)!r}, {str(tmp_path / 'out.tif')!r}, model={str(model)!r}, tile=64, "
        "device='auto', overwrite=True)\n"
        "print('torch' in sys.modules, 'onnx' in sys.modules)\n"
    )
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1].split()[0] == "False"
    assert done.stdout.strip().splitlines()[-1] == "False False"
    expected, _ = predict_in_process(scene, model, "onnx", tile=64)
    with rasterio.open(tmp_path / "out.tif") as src:
        assert np.array_equal(src.read(1), expected)


def test_overlapping_cpu_runs_give_the_answers_of_runs_one_at_a_time(
    model_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a worker has as many task threads as cores, its tasks' runs go through one session
    at once, one thread each: every batch's classes and probabilities are those of a run alone."""
    from concurrent.futures import ThreadPoolExecutor

    from geoseg.engines import onnx_cpu
    from geoseg.models.onnx import cached_onnx, read_onnx_model

    gib = 2**30
    assert onnx_cpu.overlapping_runs(2, 2, 24 * gib) and not onnx_cpu.overlapping_runs(
        8, 2, 24 * gib
    )
    assert not onnx_cpu.overlapping_runs(1, 2, 24 * gib) and not onnx_cpu.overlapping_runs(
        1, 1, 24 * gib
    )
    assert not onnx_cpu.overlapping_runs(2, 2, 4 * gib)  # a small machine keeps one run at a time
    path = model_factory(in_channels=3)
    onnx_file = cached_onnx(str(path), file_sha256(path))
    config, summary = read_onnx_model(onnx_file)
    # one thread like the overlapping runs, so only running at once differs (not the threads'
    # split of the work, which could change float sums on another CPU kind)
    serial = onnx_cpu.CpuEngine(onnx_file, config, InferenceOptions(), threads=1, summary=summary)
    assert isinstance(
        serial.lock, type(threading.Lock())
    )  # outside a Dask worker: one run at a time
    monkeypatch.setattr(onnx_cpu, "worker_task_threads", lambda: 2)
    monkeypatch.setattr(onnx_cpu, "physical_memory", lambda: 64 * gib)
    overlapping = onnx_cpu.CpuEngine(
        onnx_file, config, InferenceOptions(), threads=2, summary=summary
    )
    assert isinstance(overlapping.lock, onnx_cpu.NoLock) and overlapping.threads == 1
    batches = []
    for i in range(8):
        raw = np.stack(
            [random_scene(np.random.default_rng(10 * i + j), 3, 64, 64, "uint8") for j in range(2)]
        )
        valid = np.random.default_rng(i).random((2, 64, 64)) > 0.1
        batches.append((raw, valid))
    alone = [serial.run(raw, valid, probabilities=True) for raw, valid in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(
            pool.map(lambda b: overlapping.run(b[0], b[1], probabilities=True), batches * 3)
        )
    for a, b in zip(alone * 3, together):
        assert np.array_equal(a.classes, b.classes)
        assert np.array_equal(a.probabilities, b.probabilities)


def test_large_tiles_run_one_at_a_time_on_all_threads_where_small_ones_overlap(
    model_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiles over :data:`OVERLAP_MAX_TILE_PIXELS` go through the all-thread session, one run at a
    time (each overlapping run of a large tile would hold its own arena), with a run's answers."""
    from geoseg.engines import onnx_cpu
    from geoseg.models.onnx import cached_onnx, read_onnx_model

    path = model_factory(in_channels=3)
    onnx_file = cached_onnx(str(path), file_sha256(path))
    config, summary = read_onnx_model(onnx_file)
    serial = onnx_cpu.CpuEngine(onnx_file, config, InferenceOptions(), threads=2, summary=summary)
    monkeypatch.setattr(onnx_cpu, "worker_task_threads", lambda: 2)
    monkeypatch.setattr(onnx_cpu, "physical_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(onnx_cpu, "OVERLAP_MAX_TILE_PIXELS", 48 * 48)
    engine = onnx_cpu.CpuEngine(onnx_file, config, InferenceOptions(), threads=2, summary=summary)
    assert engine.large is not None and engine.large[0].threads == 2 and engine.threads == 1
    raw = np.stack([random_scene(np.random.default_rng(j), 3, 64, 64, "uint8") for j in range(2)])
    valid = np.ones((2, 64, 64), dtype=bool)
    out = engine.run(raw, valid)
    assert (
        engine.large[0]._sessions and not engine.sessions._sessions
    )  # the 64² tiles: the large path
    assert np.array_equal(out.classes, serial.run(raw, valid).classes)
    engine.run(raw[:, :, :32, :32], valid[:, :32, :32])
    assert engine.sessions._sessions  # 32² tiles overlap, one thread each
