"""Client memory and planning time of ``geoseg map`` against the number of scenes.

    python benchmarks/map.py [--size 1024] [--counts 10,1000]

Cuts one synthetic 3-band uint8 region (``--size`` pixels square, 10 m, EPSG:32633) into N
overlapping scenes (a near-square grid of pieces, 8 px of overlap, every fifth one dated), for
each N of ``--counts``, in a temporary folder. Each map runs in its own process with one local
worker process (so the client's peak RSS is the client's alone), a tiny random U-Net and 256 px
tiles; the region, and so the output, is the same for every N: only the scene count changes.
Prints and writes benchmarks/map.json: client peak RSS, planning and total seconds per N, and
the peak's ratio to the smallest N (target: 1.2 or less).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OVERLAP = 8


def make_scenes(folder: Path, size: int, count: int, seed: int = 0) -> list[str]:
    """``count`` overlapping pieces of one region, as GeoTIFFs in ``folder``."""
    import rasterio
    from rasterio.transform import from_origin

    from tests.conftest import random_scene

    rng = np.random.default_rng(seed)
    data = np.clip(random_scene(rng, 3, size, size, "uint8"), 1, 255)
    rows = int(math.sqrt(count))
    cols = -(-count // rows)
    paths = []
    for k in range(count):
        i, j = divmod(k, cols)
        r0, r1 = i * size // rows, (i + 1) * size // rows
        c0, c1 = j * size // cols, (j + 1) * size // cols
        r0, c0 = max(0, r0 - OVERLAP), max(0, c0 - OVERLAP)
        if i == rows - 1:
            r1 = size
        path = folder / f"scene-{k:05d}.tif"
        profile = dict(
            driver="GTiff",
            width=c1 - c0,
            height=r1 - r0,
            count=3,
            dtype="uint8",
            nodata=0,
            crs="EPSG:32633",
            transform=from_origin(300000 + c0 * 10, 5800000 - r0 * 10, 10, 10),
        )
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data[:, r0:r1, c0:c1])
            if k % 5 == 0:
                dst.update_tags(TIFFTAG_DATETIME=f"2024:06:{1 + k % 28:02d} 10:00:00")
        paths.append(str(path))
    return paths


def child(folder: Path, model: Path) -> None:
    """One map in this process; prints its measurements as JSON."""
    import geoseg.mapping

    t0 = time.perf_counter()
    result = geoseg.mapping.map(
        [str(folder / "scene-*.tif")],
        folder / "map.tif",
        model=str(model),
        workers=1,
        tile=256,
        device="cpu",
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "scenes": result.extras["scenes"],
                "planning_s": round(result.extras["planning_seconds"], 3),
                "total_s": round(time.perf_counter() - t0, 2),
                "client_peak_mib": round(peak, 1),
                "megapixels": round(result.pixels / 1e6, 3),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--counts", default="10,1000")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    from tests.conftest import make_model_file

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model_file(Path(tmp) / "model.pt", 3)
        for n in (int(c) for c in args.counts.split(",")):
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            make_scenes(folder, args.size, n)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), str(model)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["client_peak_mib"]
    for r in runs:
        r["peak_ratio"] = round(r["client_peak_mib"] / base, 3)
    summary = {"size": args.size, "runs": runs}
    print(
        f"client peak {runs[-1]['scenes']} scenes / {runs[0]['scenes']} scenes: {runs[-1]['peak_ratio']:.3f}"
    )
    (ROOT / "benchmarks" / "map.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
