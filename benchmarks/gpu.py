"""GPU inference: end-to-end throughput against the network's own forward pass, batch sweep,
one vs two GPU workers, what mixed precision changes in the class raster, and the engines
(PyTorch fp32, PyTorch bf16 + channels-last, ONNX Runtime's CUDA provider when installed): one
whole engine step each (raw tiles in, uint8 out) and predict end to end per ``--engine``.

    python benchmarks/gpu.py [--scene SCENE.tif] [--model NAME_OR_PATH] [--size 4096]

Without CUDA only the precision check runs (on the CPU, bf16 autocast), so the figures it
prints are labelled with the device they were measured on. Writes benchmarks/gpu.json.
All speed figures are ratios within one run; the target is end-to-end >= 0.8 of forward.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

import geoseg
from geoseg.dask.processes import worker_commands
from geoseg.engines.infer import InferenceOptions, forward, normalize
from geoseg.models.load import load_model

ROOT = Path(__file__).resolve().parents[1]


def make_scene(path: Path, size: int, bands: int) -> Path:
    """A smooth random uint16 scene in the sample's value range, written tiled."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=bands,
        dtype="uint16",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        crs="EPSG:32633",
        transform=from_origin(300000, 5800000, 10, 10),
    )
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 512):
            block = rng.normal(1500, 600, size=(bands, min(512, size - r), size)).clip(0, 10000)
            dst.write(block.astype("uint16"), window=((r, r + block.shape[1]), (0, size)))
    return path


def forward_mps(
    model: Any,
    tile: int,
    batch: int,
    device: torch.device,
    options: InferenceOptions,
    seconds: float = 10.0,
) -> float:
    """Network-input megapixels per second of ``forward`` on host batches (copy included)."""
    x = (
        np.random.default_rng(0)
        .normal(size=(batch, model.config.in_channels, tile, tile))
        .astype(np.float32)
    )
    forward(model.network, x, device, options)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        forward(model.network, x, device, options)
        n += 1
    return n * batch * tile * tile / 1e6 / (time.perf_counter() - t)


def precision_effect(scene: Path, model_name: str | None, device: str) -> dict[str, float]:
    """Fraction of class pixels that change with bf16 / fp16 autocast against float32."""
    model = load_model(model_name, device=device)
    dev = torch.device(device)
    with rasterio.open(scene) as src:
        data = src.read(window=((0, 1024), (0, 1024)))
    x = normalize(data, np.ones(data.shape[1:], bool), model.config.mean, model.config.std)[None]
    ref = forward(model.network, x, dev).argmax(1)
    out = {}
    for p in ("bf16", "fp16"):
        if p == "fp16" and dev.type == "cpu":
            continue
        got = forward(model.network, x, dev, InferenceOptions(precision=p)).argmax(1)
        out[p] = float((got != ref).float().mean())
    return out


def e2e(
    scene: Path,
    model: str | None,
    tile: int,
    batch: int,
    scheduler: str | None,
    workers: int | None,
    options: dict[str, Any],
) -> tuple[float, float]:
    """(network-input MP/s, scene MP/s) of geoseg.predict."""
    with tempfile.TemporaryDirectory() as tmp:
        res = geoseg.predict(
            str(scene),
            f"{tmp}/c.tif",
            model=model,
            tile=tile,
            batch_size=batch,
            scheduler=scheduler,
            workers=workers,
            device="cuda",
            **options,
        )
    return res.pixels * res.overlap_factor / 1e6 / res.seconds, res.megapixels_per_second


def engine_rates(
    model: str | None, tile: int, batch: int, device: str, seconds: float = 10.0
) -> list[dict[str, Any]]:
    """Megapixels per second of one whole engine step (raw uint16 tiles in: upload, normalisation,
    forward, argmax and uint8 probabilities back) per engine and setting on ``device``."""
    from geoseg.engines import onnxruntime_available
    from geoseg.models.checkpoint import file_sha256, resolve_model_path
    from geoseg.prediction.worker_models import worker_engine

    path, _ = resolve_model_path(model)
    sha = file_sha256(path)
    channels = load_model(model).config.in_channels
    raw = (
        np.random.default_rng(0)
        .normal(1500, 600, size=(batch, channels, tile, tile))
        .clip(0, 1e4)
        .astype(np.uint16)
    )
    valid = np.ones((batch, tile, tile), bool)
    settings = [
        ("torch", InferenceOptions(precision="fp32")),
        ("torch", InferenceOptions(precision="bf16", channels_last=True)),
    ]
    if onnxruntime_available():
        settings.append(("onnx", InferenceOptions(precision="fp32")))
    rows = []
    for engine, opts in settings:
        try:
            eng = worker_engine(str(path), sha, device, engine, opts)
        except Exception as exc:  # noqa: BLE001 - e.g. no CUDA provider in this onnxruntime build
            rows.append(
                {"engine": engine, "precision": opts.precision, "error": str(exc).splitlines()[0]}
            )
            continue
        eng.run(raw, valid, True)
        n, t = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t < seconds:
            eng.run(raw, valid, True)
            n += 1
        rows.append(
            {
                "engine": engine,
                "precision": opts.precision,
                "channels_last": opts.channels_last,
                "step_mps": n * batch * tile * tile / 1e6 / (time.perf_counter() - t),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def gpu_workers(n: int) -> tuple[subprocess.Popen, list[subprocess.Popen], str]:
    """A scheduler and ``n`` single-GPU workers (CUDA_VISIBLE_DEVICES=i, resources GPU=1)."""
    tmp = Path(tempfile.mkdtemp())
    sched = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--port",
            "0",
            "--scheduler-file",
            str(tmp / "s.json"),
            "--no-dashboard",
        ]
    )
    while not (tmp / "s.json").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    address = json.loads((tmp / "s.json").read_text())["address"]
    workers = [
        subprocess.Popen(list(c.args), env={**os.environ, **dict(c.env)})
        for c in worker_commands(address, n)
    ]
    return sched, workers, address


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.json"))
    args = ap.parse_args()
    model = load_model(args.model)
    scene = (
        Path(args.scene)
        if args.scene
        else make_scene(Path(tempfile.mkdtemp()) / "scene.tif", args.size, model.config.in_channels)
    )
    result: dict[str, Any] = {"torch": torch.__version__, "scene": str(scene), "model": model.name}
    if not torch.cuda.is_available():
        result["device"] = "cpu (no CUDA here: only the precision check ran)"
        result["precision_changed_fraction"] = precision_effect(scene, args.model, "cpu")
        result["engines_cpu"] = engine_rates(args.model, 512, 4, "cpu", seconds=3.0)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    dev = torch.device("cuda")
    result["device"] = torch.cuda.get_device_name(0)
    result["gpus"] = torch.cuda.device_count()
    result["precision_changed_fraction"] = precision_effect(scene, args.model, "cuda")
    result["engines"] = engine_rates(args.model, args.tile, 8, "cuda")
    result["engines_e2e"] = {
        engine: e2e(scene, args.model, args.tile, 8, None, 1, {"engine": engine})[0]
        for engine in ("auto", "torch", "onnx")
        if engine != "onnx"
        or any("error" not in r for r in result["engines"] if r["engine"] == "onnx")
    }
    sweep = []
    for precision in ("fp32", "bf16"):
        opts = InferenceOptions(precision=precision, channels_last=True)
        for batch in (1, 2, 4, 8, 16):
            fwd = forward_mps(load_model(args.model, device="cuda"), args.tile, batch, dev, opts)
            net, scene_mps = e2e(
                scene,
                args.model,
                args.tile,
                batch,
                None,
                1,
                {"precision": precision, "channels_last": True},
            )
            row = {
                "precision": precision,
                "batch": batch,
                "forward_mps": fwd,
                "e2e_network_mps": net,
                "e2e_scene_mps": scene_mps,
                "ratio": net / fwd,
            }
            sweep.append(row)
            print(json.dumps(row), flush=True)
    result["sweep"] = sweep
    if torch.cuda.device_count() >= 2:
        best = max(sweep, key=lambda r: r["e2e_network_mps"])
        sched, workers, address = gpu_workers(2)
        try:
            net2, scene2 = e2e(
                scene,
                args.model,
                args.tile,
                best["batch"],
                address,
                None,
                {"precision": best["precision"], "channels_last": True},
            )
        finally:
            for p in [*workers, sched]:
                p.kill()
        result["two_gpus"] = {"e2e_network_mps": net2, "speedup": net2 / best["e2e_network_mps"]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
