"""Block-wise polygonization (geoseg vectorize) against one pass of rasterio.features.shapes over
the whole raster: time and peak memory, for class rasters up to 16,384 x 16,384 pixels.

    python benchmarks/vectorize.py [--sizes 1024,4096,16384]

The class rasters look like land-cover maps: blobs of 8 classes at several scales with speckle,
tiled 512, DEFLATE. Each measurement runs in its own process; peak memory is the summed RSS of
the process tree. Prints a table and writes benchmarks/vectorize.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from common import PeakRSS, geoseg_command, tiled_profile
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]

SINGLE_PASS = r"""
import sys, numpy as np, rasterio, shapely, pyogrio
from rasterio.features import shapes
src, out = sys.argv[1], sys.argv[2]
with rasterio.open(src) as s:
    a = s.read(1); t = s.transform; crs = s.crs.to_wkt()
geoms, vals = [], []
for g, v in shapes(a, mask=a != 255, connectivity=4, transform=t):
    geoms.append(shapely.geometry.shape(g)); vals.append(int(v))
pyogrio.raw.write(out, np.asarray(shapely.to_wkb(geoms), dtype=object), [np.asarray(vals, np.int32)],
                  ["class"], crs=crs, geometry_type="Polygon", driver="GPKG")
print(len(geoms))
"""


def build(path: Path, size: int, seed: int = 0) -> None:
    """A land-cover-like class raster (fields of 64 px, parcels of 16 px, some single pixels),
    written strip by strip: about 3,000 polygons per megapixel."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 8, (size // 64 + 2, size // 64 + 2)).astype(np.uint8)
    profile = tiled_profile(size, 1, "uint8", (300000, 5900000), nodata=255, BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 1024):
            h = min(1024, size - r0)
            rows = np.arange(r0, r0 + h)
            strip = coarse[rows // 64][:, np.arange(size) // 64]
            mid = rng.integers(0, 8, (h // 16 + 1, size // 16 + 1)).astype(np.uint8)
            pick = np.kron(
                rng.random((h // 16 + 1, size // 16 + 1)) < 0.1, np.ones((16, 16), bool)
            )[:h, :size]
            mid = np.kron(mid, np.ones((16, 16), np.uint8))[:h, :size]
            strip = np.where(pick, mid, strip)
            speck = rng.random((h, size)) < 0.0005
            strip[speck] = rng.integers(0, 8, speck.sum())
            dst.write(strip[None], window=Window(0, r0, size, h))


def measure(cmd: list[str]) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    mon = PeakRSS(proc.pid, tree=True, interval=0.05)
    mon.start()
    out, _ = proc.communicate()
    peak = mon.stop()
    if proc.returncode:
        raise SystemExit(f"{cmd} failed")
    return time.perf_counter() - t0, peak / 2**20, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="geoseg-vec-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        raster = work / f"classes-{size}.tif"
        if not raster.exists():
            build(raster, size)
        single = work / f"single-{size}.gpkg"
        blocks = work / f"blocks-{size}.gpkg"
        for p in (single, blocks):
            p.unlink(missing_ok=True)
        t_single, m_single, n_single = measure(
            [sys.executable, "-c", SINGLE_PASS, str(raster), str(single)]
        )
        t_blocks, m_blocks, _ = measure(
            geoseg_command("vectorize", str(raster), "-o", str(blocks), "--quiet")
        )
        import pyogrio

        n_blocks = pyogrio.read_info(blocks)["features"]
        rows.append(
            {
                "size": size,
                "polygons_single": int(n_single),
                "polygons_blocks": int(n_blocks),
                "seconds_single": t_single,
                "seconds_blocks": t_blocks,
                "time_ratio": t_blocks / t_single,
                "peak_mb_single": m_single,
                "peak_mb_blocks": m_blocks,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{'size':>7} {'polygons':>10} {'single s':>9} {'blocks s':>9} {'ratio':>6} "
        f"{'single MB':>10} {'blocks MB':>10} {'blocks MB / smallest':>21}"
    )
    for r in rows:
        print(
            f"{r['size']:>7} {r['polygons_blocks']:>10} {r['seconds_single']:>9.1f} {r['seconds_blocks']:>9.1f} "
            f"{r['time_ratio']:>6.2f} {r['peak_mb_single']:>10.0f} {r['peak_mb_blocks']:>10.0f} "
            f"{r['peak_mb_blocks'] / rows[0]['peak_mb_blocks']:>21.2f}"
        )
    (ROOT / "benchmarks" / "vectorize.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
