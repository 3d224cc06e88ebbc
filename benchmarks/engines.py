"""Engines: forward throughput per architecture and engine, end-to-end predict per engine, and the
pipeline's own cost with a network of near-zero cost against its floor; all in one run.

    python benchmarks/engines.py [--sizes 4096,8192] [--cheap-size 8192] [--archs all|unet-small,...]
        [--forward-tile 256] [--forward-batch 2] [--compile-archs unet-small] [--skip forward,e2e,cheap]

1. Forward Mpx/s of every built-in architecture (3 bands, 8 classes, --forward-tile/-batch) under
   PyTorch eager, channels-last, torch.compile (where it compiles) and ONNX Runtime (CPU).
2. ``geoseg predict`` end to end with ``--engine torch`` and ``--engine auto`` (ONNX Runtime on
   the CPU) on scenes mirror-tiled from the real Landsat scene (see benchmarks/predict.py), with
   the built-in model's architecture (unet-small); peak RSS of the process tree.
3. A U-Net of depth 1 with 2 filters end to end at --cheap-size against its floor measured in the
   same run: its forward over every tile + reading every block of the scene + GDAL writing the
   class COG. The pipeline's own cost is the difference.

Each new ``.pt`` model is converted to ONNX once (cached by content hash) before the timed runs,
as a user's first run with it would; that time is reported on its own (``onnx_conversion_s``).

Prints tables and writes benchmarks/engines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import LANDSAT, build_scene, run_predict  # noqa: E402  (benchmarks/predict.py)

from geoseg.classes import ClassInfo
from geoseg.engines.fused import cpu_runs  # noqa: E402
from geoseg.models import create_model, list_models, output_stride  # noqa: E402
from geoseg.models.checkpoint import build_config, save_model  # noqa: E402
from geoseg.models.load import load_model  # noqa: E402
from geoseg.models.onnx import export_network  # noqa: E402
from geoseg.models.ort_session import make_session  # noqa: E402
from geoseg.prediction.plan import auto_tile  # noqa: E402
from geoseg.raster.read import open_scene
from geoseg.raster.sink import RasterSink  # noqa: E402
from geoseg.tiling import TileGrid, auto_margin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [ClassInfo(i + 1, f"class{i + 1}", (30 * i, 200, 100)) for i in range(8)]


def best_rate(fn: Any, pixels: int, seconds: float, rounds: int = 3) -> float:
    """Megapixels per second of ``fn`` (one call = ``pixels``): the best of a few timed rounds,
    so a momentary disturbance on a shared machine does not flatter one side."""
    fn()
    best = 0.0
    for _ in range(rounds):
        t0, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        best = max(best, n * pixels / (time.perf_counter() - t0) / 1e6)
    return best


def forward_table(
    archs: list[str], tile: int, batch: int, seconds: float, compile_archs: list[str]
) -> list[dict]:
    """Forward Mpx/s per architecture and engine, same tiles, same threads."""
    rows = []
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    for spec in list_models():
        if archs and spec.name not in archs:
            continue
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = create_model(spec.name, 3, 8).eval()
        stride = output_stride(net)
        size = max(stride, tile // stride * stride)
        x = torch.randn(batch, 3, size, size)
        px = batch * size * size
        row: dict[str, Any] = {"arch": spec.name, "tile": size}
        with torch.inference_mode():
            row["eager"] = best_rate(lambda: net(x), px, seconds)
            net_cl = net.to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            row["channels_last"] = best_rate(lambda: net_cl(x_cl), px, seconds)
            net = net.to(memory_format=torch.contiguous_format)
        if spec.name in compile_archs:
            try:
                compiled = torch.compile(net, dynamic=False)
                with torch.inference_mode():
                    row["compile"] = best_rate(lambda: compiled(x), px, seconds)
            except Exception as exc:  # noqa: BLE001 - "where it works"
                row["compile"] = None
                row["compile_error"] = str(exc).splitlines()[0][:120]
        session = make_session(
            export_network(net, 3, stride).SerializeToString(),
            torch.device("cpu"),
            threads=len(os.sched_getaffinity(0)),
        )
        xn = x.numpy()
        row["onnxruntime"] = best_rate(lambda: session.run(None, {"image": xn}), px, seconds)
        row["ort_over_eager"] = row["onnxruntime"] / row["eager"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def make_model(path: Path, arch: str = "unet-small", **kwargs: Any) -> Path:
    torch.manual_seed(0)
    net = create_model(arch, 3, 8, **kwargs).eval()
    cfg = build_config(net, arch, kwargs, ["B2", "B3", "B4"], [7000.0] * 3, [2000.0] * 3, CLASSES)
    return save_model(path, net, cfg)


def convert_once(model: Path) -> float:
    """Seconds to convert a new ``.pt`` model to ONNX, once per content hash: done here, before
    the timed runs, as a user's first run with a model does it (later runs find it cached)."""
    from geoseg.models.checkpoint import file_sha256
    from geoseg.models.onnx import cached_onnx

    t0 = time.perf_counter()
    cached_onnx(str(model), file_sha256(model))
    return time.perf_counter() - t0


def end_to_end(
    model: Path, scene: Path, out: Path, engine: str, tile: int, batch: int
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``geoseg predict --engine ENGINE`` as a fresh process."""
    wall, peak = run_predict(scene, out, model, tile, batch, ["--engine", engine])
    return wall, peak / 2**20


def floor_seconds(
    model: Path, scene: Path, classes: Path, tile: int, batch: int, work: Path
) -> dict[str, float]:
    """The cheap network's forward over every tile (ONNX Runtime, all cores), reading every
    block of the scene, and GDAL writing the class raster as a COG: what no pipeline can beat."""
    loaded = load_model(model)
    cfg = loaded.config
    info = open_scene(scene)
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    t = tile if tile else auto_tile(margin, cfg.output_stride)
    grid = TileGrid.create(info.height, info.width, t, margin, cfg.output_stride)
    session = make_session(
        export_network(loaded.network, 3, cfg.output_stride).SerializeToString(),
        torch.device("cpu"),
        threads=len(os.sched_getaffinity(0)),
    )
    x = (
        np.random.default_rng(0)
        .normal(size=(batch, 3, grid.tile_height, grid.tile_width))
        .astype(np.float32)
    )
    # the faster of one run per batch and the runs predict's ONNX engine makes on the CPU
    rate = max(
        best_rate(lambda: session.run(None, {"image": x}), x.size // 3, 2.0),
        best_rate(
            lambda: [
                session.run(None, {"image": x[r]}) for r in cpu_runs(*x.shape[:1], *x.shape[2:])
            ],
            x.size // 3,
            2.0,
        ),
    )
    forward = len(grid) * grid.tile_height * grid.tile_width / 1e6 / rate

    t0 = time.perf_counter()
    with rasterio.open(scene) as src:
        for _, win in src.block_windows(1):
            src.read(window=win)
    read = time.perf_counter() - t0

    with rasterio.open(classes) as src:
        blocks = [(win, src.read(1, window=win)) for _, win in src.block_windows(1)]
    t0 = time.perf_counter()
    if True:  # the block cache as predict bounds it (RasterSink)
        sink = RasterSink(work / "floor-classes.tif", info, 1, 255, CLASSES, {}, ["class"])
        for win, arr in blocks:
            sink.write(arr, win)
        sink.commit()
    write = time.perf_counter() - t0
    return {
        "forward": forward,
        "read": read,
        "write": write,
        "floor": forward + read + write,
        "forward_mp_per_s": rate,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4096,8192")
    ap.add_argument("--cheap-size", type=int, default=8192)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument(
        "--forward-tile", type=int, default=256, help="tile of the per-architecture table"
    )
    ap.add_argument("--forward-batch", type=int, default=2)
    ap.add_argument("--archs", default="all")
    ap.add_argument(
        "--compile-archs", default="unet-small", help="architectures to try torch.compile on"
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="per forward measurement round")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: forward,e2e,cheap")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--note", default="", help="how this run was taken (load, what ran beside it)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "engines.json"))
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="geoseg-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "cpu_count": len(os.sched_getaffinity(0)),
        "tile": args.tile,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
    }
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    out_json = Path(args.out)

    # parts skipped in this run keep the figures of the run that measured them
    earlier = json.loads(out_json.read_text()) if out_json.exists() else {}
    parts = [
        key
        for part, key in (("forward", "forward"), ("e2e", "end_to_end"), ("cheap", "cheap"))
        if part not in skip
    ]
    notes = {**earlier.get("notes", {}), **{p: args.note for p in parts}}
    if "note" in earlier:  # the single note of older files was about the forward table's run
        notes.setdefault("forward", earlier.pop("note"))
    result["notes"] = notes

    def save() -> None:
        out_json.write_text(json.dumps({**earlier, **result}, indent=1))

    if "forward" not in skip:
        archs = [] if args.archs == "all" else args.archs.split(",")
        result["forward_tile"], result["forward_batch"] = args.forward_tile, args.forward_batch
        result["forward"] = forward_table(
            archs,
            args.forward_tile,
            args.forward_batch,
            args.seconds,
            args.compile_archs.split(","),
        )
        save()
    if not LANDSAT.exists():
        raise SystemExit(f"the end-to-end parts need the Landsat scene at {LANDSAT}")
    if "e2e" not in skip:
        model = make_model(work / "unet-small-3band.pt")
        conversion = convert_once(model)
        rows = []
        for size in [int(s) for s in args.sizes.split(",") if s]:
            scene = work / f"landsat-{size}.tif"
            if not scene.exists():
                build_scene(scene, size)
            row: dict[str, Any] = {"size": size}
            for engine in ("torch", "auto"):
                wall, peak = end_to_end(
                    model,
                    scene,
                    work / f"c-{engine}-{size}.tif",
                    engine,
                    args.tile,
                    args.batch_size,
                )
                row[f"{engine}_s"], row[f"{engine}_peak_mb"] = wall, peak
            row["speedup"] = row["torch_s"] / row["auto_s"]
            row["onnx_conversion_s"] = conversion  # once per model, not in auto_s
            rows.append(row)
            print(json.dumps(row), flush=True)
            result["end_to_end"] = rows
            save()
    if "cheap" not in skip:
        size = args.cheap_size
        scene = work / f"landsat-{size}.tif"
        if not scene.exists():
            build_scene(scene, size)
        cheap = make_model(work / "cheap.pt", "unet", depth=1, base_width=2)
        conversion = convert_once(cheap)
        classes = work / f"cheap-{size}.tif"
        wall, peak = end_to_end(cheap, scene, classes, "auto", args.tile, args.batch_size)
        floor = floor_seconds(cheap, scene, classes, args.tile, args.batch_size, work)
        result["cheap"] = {
            "size": size,
            "end_to_end_s": wall,
            "peak_mb": peak,
            **floor,
            "floor_over_end_to_end": floor["floor"] / wall,
            "onnx_conversion_s": conversion,
        }
        print(json.dumps(result["cheap"]), flush=True)
        save()
    print_tables(result)


def print_tables(r: dict[str, Any]) -> None:
    if "forward" in r:
        print(
            f"\nforward Mpx/s (tile {r['forward_tile']}, batch {r['forward_batch']}, {r['cpu_count']} threads)"
        )
        print(f"{'arch':<15}{'eager':>8}{'ch-last':>9}{'compile':>9}{'ORT':>8}{'ORT/eager':>10}")
        for f in r["forward"]:
            comp = f.get("compile")
            print(
                f"{f['arch']:<15}{f['eager']:>8.3f}{f['channels_last']:>9.3f}"
                f"{(f'{comp:.3f}' if comp else '-'):>9}{f['onnxruntime']:>8.3f}{f['ort_over_eager']:>10.2f}"
            )
    for e in r.get("end_to_end", []):
        print(
            f"{e['size']}²: torch {e['torch_s']:.1f} s ({e['torch_peak_mb']:.0f} MB), auto/ONNX Runtime "
            f"{e['auto_s']:.1f} s ({e['auto_peak_mb']:.0f} MB): {e['speedup']:.2f}x "
            f"(+ {e.get('onnx_conversion_s', 0):.1f} s converting the model once)"
        )
    if "cheap" in r:
        c = r["cheap"]
        print(
            f"cheap network {c['size']}²: end to end {c['end_to_end_s']:.1f} s, floor {c['floor']:.1f} s "
            f"(forward {c['forward']:.1f} + read {c['read']:.1f} + write {c['write']:.1f}): "
            f"floor / end-to-end = {c['floor_over_end_to_end']:.2f}"
        )


if __name__ == "__main__":  # the local Dask cluster spawns processes that re-import this file
    main()
