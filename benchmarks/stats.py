"""geoseg stats: zone areas by exact covered fraction (exactextract) against centre-of-pixel
rasterization, and the time of class areas per zone against reading the raster once.

    python benchmarks/stats.py [--size 16384] [--zones 1000]

Prints one JSON object and writes it to benchmarks/stats.json: per zone size, the mean and worst
relative area error of both methods; seconds to read the raster once (every window read, so
every tile decompressed), to count it without zones and with the zones, their ratios, and each
measurement's peak memory. Each measurement runs in a fresh process (no GDAL block cache carried over; the page cache warm for
all), the Dask cluster inside it.
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
import shapely
from common import tiled_profile
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def accuracy(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Relative area error of both methods on random blobs of about 0.5 ha, 5 ha and 50 ha, 10 m pixels."""
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource
    from rasterio.features import rasterize

    out = {}
    for radius in (40.0, 125.0, 400.0):
        side = int(radius * 3 / 10)
        blobs = [
            shapely.Point(rng.uniform(0, side * 10), rng.uniform(0, side * 10)).buffer(
                radius * rng.uniform(0.6, 1)
            )
            for _ in range(50)
        ]
        blobs = [shapely.affinity.scale(b, rng.uniform(0.5, 1.5), 1) for b in blobs]
        src = NumPyRasterSource(np.zeros((side, side), np.uint8), 0, 0, side * 10, side * 10)
        feats = [
            {"type": "Feature", "properties": {"i": i}, "geometry": shapely.geometry.mapping(b)}
            for i, b in enumerate(blobs)
        ]
        exact = {
            f["properties"]["i"]: float(np.sum(f["properties"]["coverage"])) * 100
            for f in exact_extract(src, feats, ["coverage"], include_cols=["i"])
        }
        transform = from_origin(0, side * 10, 10, 10)
        extent = shapely.box(0, 0, side * 10, side * 10)
        e_err, c_err = [], []
        for i, b in enumerate(blobs):
            true = shapely.intersection(b, extent).area
            centre = rasterize([(b, 1)], out_shape=(side, side), transform=transform).sum() * 100
            e_err.append(abs(exact.get(i, 0.0) - true) / true)
            c_err.append(abs(centre - true) / true)
        out[f"{np.pi * radius**2 / 1e4:.1f} ha"] = {
            "exact_mean": float(np.mean(e_err)),
            "exact_max": float(np.max(e_err)),
            "centre_mean": float(np.mean(c_err)),
            "centre_max": float(np.max(c_err)),
        }
    return out


#: Land-cover-like classes of the benchmark raster.
BENCH_CLASSES = ["water", "forest", "grassland", "cropland", "built-up", "bare", "wetland"]


def make_inputs(folder: Path, n: int, zones: int, rng: np.random.Generator) -> tuple[Path, Path]:
    """An n x n uint8 class raster like a land-cover map and Voronoi zones covering it.

    The classes are a smoothed random field cut into 7 bands of equal share: patches of about
    15 (the middle classes, rings between others) to 120 pixels (the outer ones), runs along a row
    of 3.8 pixels on average, DEFLATE-compressed about 6 x: a blocky raster compresses to almost
    nothing and makes reading it unrealistically cheap. Written as geoseg writes class rasters:
    a COG, DEFLATE, 512² tiles, with overviews. Reused from ``folder`` when already there.
    """
    from rasterio.shutil import copy as copy_raster
    from scipy.ndimage import gaussian_filter, zoom
    from scipy.stats import norm

    from geoseg.classes import CLASS_NODATA, ClassInfo, class_tags
    from tests.test_results_stats import write_zones

    path, zones_path = folder / f"classes-{n}.tif", folder / f"zones-{n}-{zones}.gpkg"
    if path.exists() and zones_path.exists():
        return path, zones_path
    classes = [
        ClassInfo(i, name, (30 * i, 255 - 30 * i, 100)) for i, name in enumerate(BENCH_CLASSES)
    ]
    tmp = folder / f"classes-{n}.tmp.tif"
    profile = tiled_profile(n, 1, "uint8", (300000, 5800000), nodata=CLASS_NODATA)
    half, margin, strip = n // 2, 16, 1024  # the field at half resolution, smoothed, then bilinear
    noise = np.zeros((0, half + 2 * margin), np.float32)
    edges = None
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, half, strip):
            h = min(strip, half - r)
            # the previous strip's last noise rows carried over: no seam between strips
            fresh = rng.random(
                (h + 2 * margin - len(noise[-2 * margin :]), half + 2 * margin), np.float32
            )
            noise = np.concatenate([noise[-2 * margin :], fresh])
            field = zoom(gaussian_filter(noise, 2.0, truncate=3.0), 2, order=1)[
                2 * margin : 2 * (margin + h), 2 * margin : 2 * margin + n
            ]
            if edges is None:
                edges = (
                    norm.ppf(np.linspace(0, 1, len(classes) + 1)[1:-1]) * field.std() + field.mean()
                ).astype(np.float32)
            dst.write(
                np.searchsorted(edges, field).astype(np.uint8)[None],
                window=Window(0, 2 * r, n, 2 * h),
            )
        dst.update_tags(**class_tags(classes, "bench"))
    copy_raster(
        str(tmp), str(path), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, NUM_THREADS="ALL_CPUS"
    )
    tmp.unlink()
    extent = shapely.box(300000, 5800000 - n * 10, 300000 + n * 10, 5800000)
    points = shapely.multipoints(
        np.column_stack(
            [
                rng.uniform(300000, 300000 + n * 10, zones),
                rng.uniform(5800000 - n * 10, 5800000, zones),
            ]
        )
    )
    cells = shapely.intersection(
        np.asarray(shapely.get_parts(shapely.voronoi_polygons(points, extend_to=extent))), extent
    )
    return path, write_zones(zones_path, list(cells), [f"z{i}" for i in range(len(cells))])


def _cpu() -> float:
    """CPU seconds of this process so far, all its threads (the in-process Dask workers too)."""
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _read_all(path: str, threads: int) -> None:
    """Every 2048² window of the raster read (every tile decompressed), by ``threads`` threads
    with a dataset each, as a program that only reads the raster would."""
    from concurrent.futures import ThreadPoolExecutor

    with rasterio.open(path) as src:
        windows = [
            Window(c, r, min(2048, src.width - c), min(2048, src.height - r))
            for r in range(0, src.height, 2048)
            for c in range(0, src.width, 2048)
        ]

    def read(part: list[Window]) -> None:
        with rasterio.open(path) as src:
            for w in part:
                src.read(1, window=w)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, [windows[i::threads] for i in range(threads)]))


def measure(what: str, path: str, zones: str) -> None:
    """One measurement in this (fresh) process: wall and CPU seconds and peak RSS, as JSON on stdout.

    ``read`` / ``read2``: every 2048² window read once by 1 / 2 threads (:func:`_read_all`);
    ``stats`` / ``zones``: geoseg.stats without / with the zones on the in-process Dask cluster
    it starts itself when given none (a thread per core; started before the clock starts).
    """
    out: dict[str, object] = {}
    if what.startswith("read"):
        cpu, t = _cpu(), time.perf_counter()
        _read_all(path, 2 if what == "read2" else 1)
        out["seconds"], out["cpu_s"] = time.perf_counter() - t, _cpu() - cpu
    else:
        from geoseg.dask.session import connect
        from geoseg.results.stats import stats

        # the cluster geoseg stats starts when given none (block_session): threads in this
        # process, without the dashboard's watchers
        client, cluster = connect(None, None, processes=False, dashboard=False)
        cpu, t = _cpu(), time.perf_counter()
        res = stats(
            path,
            zones=zones if what == "zones" else None,
            zone_field="name" if what == "zones" else None,
            client=client,
        )
        out["seconds"], out["cpu_s"] = time.perf_counter() - t, _cpu() - cpu
        out["area_m2"] = sum(r["area_m2"] for r in res.rows)
        out["pixels"] = {str(v): c["pixels"] for v, c in res.totals().items()}
        client.close()
        cluster.close()
    # VmHWM, not getrusage: ru_maxrss keeps the parent's peak across fork and exec
    hwm = next(
        line
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--zones", type=int, default=1000)
    ap.add_argument(
        "--repeat", type=int, default=2, help="rounds of measurements; the best of each is kept"
    )
    ap.add_argument("--keep", help="a folder to keep the inputs in (and reuse them from)")
    ap.add_argument(
        "--measure", nargs=3, metavar=("WHAT", "RASTER", "ZONES"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.measure:
        measure(*args.measure)
        return
    rng = np.random.default_rng(0)
    result: dict[str, object] = {"accuracy": accuracy(rng)}
    n = args.size
    with tempfile.TemporaryDirectory() as tmp:
        path, zones = make_inputs(Path(args.keep or tmp), n, args.zones, rng)

        def run(what: str) -> dict[str, Any]:
            """One measurement in a fresh process: no GDAL block cache carried over."""
            done = subprocess.run(
                [sys.executable, __file__, "--measure", what, str(path), str(zones)],
                check=True,
                capture_output=True,
                text=True,
            )
            return dict(json.loads(done.stdout.strip().splitlines()[-1]))

        run("read")  # the page cache warm for every measurement
        # the best of --repeat rounds, the measurements of a round one after the other: the
        # machine is shared, so its load changes between them
        rounds = [
            {w: run(w) for w in ("read", "read2", "stats", "zones")} for _ in range(args.repeat)
        ]
        best = {w: min((r[w] for r in rounds), key=lambda m: m["seconds"]) for w in rounds[0]}
        whole, zoned = best["stats"], best["zones"]

        def ratios(key: str) -> dict[str, float]:
            return {
                f"{w}/{base}": round(best[w][key] / best[base][key], 2)
                for w in ("stats", "zones")
                for base in ("read", "read2")
            }

        result.update(
            {
                "size": n,
                "zones": args.zones,
                "seconds": {w: round(m["seconds"], 2) for w, m in best.items()},
                "cpu_s": {w: round(m["cpu_s"], 2) for w, m in best.items()},
                "ratio_wall": ratios("seconds"),
                "ratio_cpu": ratios("cpu_s"),
                "zones_area_rel_error": abs(zoned["area_m2"] - whole["area_m2"]) / whole["area_m2"],
                "zones_pixels_max_error": max(
                    abs(zoned["pixels"][v] - p) for v, p in whole["pixels"].items()
                ),
                "peak_rss_mb": {w: round(m["peak_rss_mb"]) for w, m in best.items()},
                "load_average": round(os.getloadavg()[0], 1),
            }
        )
    print(json.dumps(result, indent=1))
    (Path(__file__).parent / "stats.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
