"""Writers scale with workers: the client's CPU per output megapixel, and what probabilities cost.

    python benchmarks/writers.py [--big 8192] [--small 1024] [--builtin 4096] [--skip cpu,builtin]

1. **Client CPU per output Mpx** (issue 25's method). A near-zero-cost network (a 1x1
   convolution, made as ONNX and imported with ``geoseg import``) on an external loopback Dask
   cluster (a scheduler and one worker of 2 threads, started here as processes), so the client
   only coordinates and writes. The client is ``geoseg predict --scheduler``; its user + system
   CPU (``/usr/bin/time``) at ``--big`` minus at ``--small`` over the megapixels between them (so
   start-up cancels out), for: the class raster; with ``--probabilities`` (8 classes); with
   ``--cells 2048``. Peak RSS of the client (the kernel's high-water mark) and of the worker
   process (sampled every 0.1 s; a fresh cluster for every run) at ``--small``, ``--mid`` and
   ``--big``: flat with the scene's size?
2. **Built-in model**, ``--builtin``² scene, default local run: wall of classes only against
   classes + ``--probabilities``, alternating, best of two each.

Figures go to benchmarks/writers.json and docs/benchmarks.md. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from common import PeakRSS, geoseg_command, predict_command
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_scene(path: Path, size: int, bands: int = 3, dtype: str = "uint16") -> Path:
    """A smooth synthetic scene (fields of a few hundred metres, noise), tiled and compressed."""
    rng = np.random.default_rng(size)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": dtype,
        "crs": "EPSG:32633",
        "transform": rasterio.transform.from_origin(300000, 5900000, 10, 10),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    coarse = rng.normal(size=(bands, size // 32 + 2, size // 32 + 2))
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 1024):
            h = min(1024, size - r0)
            rows = np.arange(r0, r0 + h) // 32
            field = coarse[:, rows][:, :, np.arange(size) // 32]
            data = 3000 + 1500 * field + rng.normal(scale=150, size=field.shape)
            dst.write(np.clip(data, 0, 65535).astype(dtype), window=Window(0, r0, size, h))
    return path


def cheap_model(work: Path) -> Path:
    """A 1x1 convolution to 8 classes, as ONNX, imported with ``geoseg import``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["logits"])
    graph = helper.make_graph(
        [node],
        "cheap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 8, "h", "w"])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    src = work / "cheap.onnx"
    onnx.save(model, str(src))
    out = work / "cheap-geoseg.onnx"
    classes = ",".join(f"{i}=class{i}" for i in range(1, 9))
    subprocess.run(
        geoseg_command(
            "import",
            str(src),
            "-o",
            str(out),
            "--classes",
            classes,
            "--mean",
            "3000,3000,3000",
            "--std",
            "1500,1500,1500",
            "--overwrite",
        ),
        check=True,
    )
    return out


class Cluster:
    """A loopback scheduler and one worker process (2 threads), as a user's cluster would be."""

    def __init__(self, work: Path) -> None:
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        log = open(work / "cluster.log", "ab")
        self.scheduler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
            ],
            stdout=log,
            stderr=log,
        )
        time.sleep(2)
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                self.address,
                "--nthreads",
                "2",
                "--nworkers",
                "1",
                "--no-nanny",
                "--memory-limit",
                "0",
                "--host",
                "127.0.0.1",
            ],
            stdout=log,
            stderr=log,
        )
        from distributed import Client

        with Client(self.address, timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)

    def watch_worker(self) -> "PeakRSS":
        mon = PeakRSS(self.worker.pid)
        mon.start()
        return mon

    def close(self) -> None:
        for p in (self.worker, self.scheduler):
            p.send_signal(signal.SIGINT)
        for p in (self.worker, self.scheduler):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def client_run(cmd: list[str]) -> dict[str, float]:
    """Run a geoseg command; its wall time, user+system CPU and peak RSS (the kernel's)."""
    stats = Path(tempfile.mkstemp(prefix="geoseg-bench-", suffix=".time")[1])
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(stats), *cmd], check=True)
    wall = time.perf_counter() - t0
    user, system, rss = stats.read_text().split()[-3:]
    stats.unlink()
    return {"wall_s": wall, "cpu_s": float(user) + float(system), "peak_mb": int(rss) / 1024}


def client_cpu(work: Path, sizes: list[int]) -> dict[str, Any]:
    model = cheap_model(work)
    scenes = {s: build_scene(work / f"scene-{s}.tif", s) for s in sizes}
    modes = {
        "classes": [],
        "probabilities": ["--probabilities", "PROBS"],
        "cells": ["--cells", "2048"],
    }
    out: dict[str, Any] = {}
    small, big = min(sizes), max(sizes)
    for mode, extra in modes.items():
        runs: dict[int, dict[str, float]] = {}
        for size, scene in scenes.items():
            target = work / (f"out-{mode}-{size}" + ("" if mode == "cells" else ".tif"))
            args = [a.replace("PROBS", str(work / f"probs-{size}.tif")) for a in extra]
            cluster = Cluster(work)  # a fresh worker: its peak is this run's
            try:
                mon = cluster.watch_worker()
                runs[size] = client_run(
                    predict_command(scene, target, model, [*args, "--scheduler", cluster.address])
                )
                runs[size]["worker_peak_mb"] = mon.stop() / 2**20
            finally:
                cluster.close()
        mpx = (big * big - small * small) / 1e6
        per_mpx = (runs[big]["cpu_s"] - runs[small]["cpu_s"]) / mpx * 1000
        out[mode] = {"client_cpu_ms_per_mpx": per_mpx, "runs": {str(k): v for k, v in runs.items()}}
        peaks = ", ".join(
            f"{s}² {r['peak_mb']:.0f}/{r['worker_peak_mb']:.0f}" for s, r in runs.items()
        )
        print(
            f"{mode:14s} client CPU {per_mpx:6.2f} ms/Mpx; peak MB client/worker: {peaks}; "
            f"wall {runs[big]['wall_s']:.1f} s at {big}²",
            flush=True,
        )
    return out


def builtin(work: Path, size: int) -> dict[str, Any]:
    scene = build_scene(work / f"builtin-{size}.tif", size, bands=4)
    runs: dict[str, list[float]] = {"classes": [], "probabilities": []}
    for _ in range(2):
        for mode in runs:
            extra = ["--probabilities", str(work / "bp.tif")] if mode == "probabilities" else []
            runs[mode].append(
                client_run(predict_command(scene, work / "bc.tif", None, extra))["wall_s"]
            )
    best = {m: min(v) for m, v in runs.items()}
    ratio = best["probabilities"] / best["classes"]
    print(
        f"built-in model {size}²: classes {best['classes']:.1f} s, with probabilities "
        f"{best['probabilities']:.1f} s ({ratio:.2f}x)",
        flush=True,
    )
    return {"size": size, "runs": runs, "best": best, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=8192)
    ap.add_argument("--small", type=int, default=1024)
    ap.add_argument("--mid", type=int, default=4096)
    ap.add_argument("--builtin", type=int, default=4096)
    ap.add_argument("--skip", default="")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "writers.json"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"cpu": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="geoseg-writers-") as tmp:
        work = Path(tmp)
        if "cpu" not in skip:
            result["client_cpu"] = client_cpu(work, [args.small, args.mid, args.big])
        if "builtin" not in skip:
            result["builtin"] = builtin(work, args.builtin)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
