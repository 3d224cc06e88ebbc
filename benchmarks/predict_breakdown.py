"""Where one ``geoseg predict`` run's time goes: the CLI runs in this process (predict's default
in-process Dask session, as ``geoseg predict`` runs it) with timers around its stages, and the CPU
time of every thread is sampled from /proc, so the engine's share of the machine can be told
from reading, encoding, Dask and start-up.

    python benchmarks/predict_breakdown.py SCENE MODEL [geoseg predict options...]

e.g. ``python benchmarks/predict_breakdown.py /tmp/landsat-4096.tif /tmp/unet-small-3band.pt
--tile 512 --batch-size 4`` (scenes and the model as benchmarks/predict.py builds them, in its
``--workdir``). Linux only. Timers: wall and the calling thread's CPU of each stage, summed over
calls. Prints a table; the prediction goes to a temporary folder, removed at the end.
"""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import psutil

STARTED = psutil.Process().create_time()  # the process's start, before the interpreter's own


def since_start() -> float:
    return time.time() - STARTED


STAGES: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 1e9, 0.0])
THREADS: dict[str, tuple[str, float]] = {}
LOCK = threading.Lock()


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall and thread CPU time to ``label``."""
    func: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t, c = time.time(), time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            with LOCK:
                s = STAGES[label]
                s[0] += 1
                s[1] += time.time() - t
                s[2] += time.thread_time() - c
                s[3] = min(s[3], t - STARTED)
                s[4] = max(s[4], time.time() - STARTED)

    setattr(owner, name, wrapper)


def sample_threads() -> None:
    """Every thread's CPU seconds, by its Python name (kept after it ends)."""
    tick = os.sysconf("SC_CLK_TCK")
    while True:
        names = {str(t.native_id): t.name for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = names.get(tid, "native (" + tid + ")")
            THREADS[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
        time.sleep(0.1)


def report(imported: float, out: str) -> None:
    end = since_start()
    shutil.rmtree(out, ignore_errors=True)
    cpu = sum(c for _, c in THREADS.values())
    cores = len(os.sched_getaffinity(0))
    print(
        f"\nwhole process: {end:.2f} s from its start, {cpu:.2f} CPU s on {cores} cores "
        f"({cores * end - cpu:.2f} core-seconds not used by it: idle, or other processes'); "
        f"geoseg's modules imported {imported:.2f} s after the start",
        file=sys.stderr,
    )
    print(
        f"{'stage':<16} {'calls':>6} {'wall s':>8} {'CPU s':>8} {'first':>7} {'last':>7}",
        file=sys.stderr,
    )
    for label, (n, wall, c, first, last) in sorted(STAGES.items(), key=lambda kv: kv[1][3]):
        print(
            f"{label:<16} {int(n):>6} {wall:>8.2f} {c:>8.2f} {first:>7.2f} {last:>7.2f}",
            file=sys.stderr,
        )
    by_name: dict[str, float] = collections.defaultdict(float)
    for name, c in THREADS.values():
        # Dask's task threads as one line; the rest by name
        by_name["Dask task threads" if "Dask-Default-Threads" in name else name] += c
    print("CPU s by thread:", file=sys.stderr)
    for name, c in sorted(by_name.items(), key=lambda kv: -kv[1]):
        if c >= 0.01:
            print(f"  {name:<30} {c:8.2f}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    scene, model, *options = sys.argv[1:]
    threading.Thread(target=sample_threads, daemon=True, name="breakdown sampler").start()
    import geoseg.dask.session as session
    import geoseg.engines.onnx_cpu as onnx_cpu
    import geoseg.prediction.cell_task as cell_task
    import geoseg.prediction.plan as plan
    import geoseg.raster.cog_writer as cog_writer
    import geoseg.raster.pool as pool

    imported = since_start()
    timed(plan, "plan_predict", "plan")
    timed(session, "connect", "cluster start")
    timed(pool.TileReader, "_read", "read")
    # the engine: normalising, the fused ONNX Runtime session's runs (its sessions built on the
    # first), class values out
    timed(onnx_cpu.CpuEngine, "run", "engine")
    timed(cell_task, "_finish", "encode+overviews")
    timed(cog_writer.CogAssembler, "add", "client: place")
    timed(cog_writer.CogAssembler, "prepare", "client: commit")
    out = tempfile.mkdtemp(prefix="geoseg-breakdown-")
    atexit.register(report, imported, out)
    from geoseg.cli.main import main as geoseg_main

    sys.argv = ["geoseg", "predict", scene, "-o", f"{out}/classes.tif", "--model", model, *options]
    sys.argv += ["--quiet"]
    geoseg_main()


if __name__ == "__main__":
    main()
