"""geoseg stats: zone areas by exact covered fraction (exactextract) against centre-of-pixel
rasterization, and the time of class areas per zone against reading the raster once.

    python benchmarks/stats.py [--size 16384] [--zones 1000]

Prints one JSON object: per zone size, the mean and worst relative area error of both methods;
seconds to read the raster once (block by block), to count it without zones and with the zones,
their ratios, and the process's peak memory (the Dask cluster runs in this process).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
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
        blobs = [shapely.Point(rng.uniform(0, side * 10), rng.uniform(0, side * 10)).buffer(radius * rng.uniform(0.6, 1))
                 for _ in range(50)]
        blobs = [shapely.affinity.scale(b, rng.uniform(0.5, 1.5), 1) for b in blobs]
        src = NumPyRasterSource(np.zeros((side, side), np.uint8), 0, 0, side * 10, side * 10)
        feats = [{"type": "Feature", "properties": {"i": i}, "geometry": shapely.geometry.mapping(b)}
                 for i, b in enumerate(blobs)]
        exact = {f["properties"]["i"]: float(np.sum(f["properties"]["coverage"])) * 100
                 for f in exact_extract(src, feats, ["coverage"], include_cols=["i"])}
        transform = from_origin(0, side * 10, 10, 10)
        extent = shapely.box(0, 0, side * 10, side * 10)
        e_err, c_err = [], []
        for i, b in enumerate(blobs):
            true = shapely.intersection(b, extent).area
            centre = rasterize([(b, 1)], out_shape=(side, side), transform=transform).sum() * 100
            e_err.append(abs(exact.get(i, 0.0) - true) / true)
            c_err.append(abs(centre - true) / true)
        out[f"{np.pi * radius ** 2 / 1e4:.1f} ha"] = {
            "exact_mean": float(np.mean(e_err)), "exact_max": float(np.max(e_err)),
            "centre_mean": float(np.mean(c_err)), "centre_max": float(np.max(c_err))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--zones", type=int, default=1000)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    from geoseg.io import CLASS_NODATA
    from geoseg.results.stats import stats
    from tests.test_results_stats import CLASSES, class_raster, write_zones  # noqa: F401

    rng = np.random.default_rng(0)
    result: dict[str, object] = {"accuracy": accuracy(rng)}
    n = args.size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classes.tif"
        profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint8", nodata=CLASS_NODATA,
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                       crs="EPSG:32633", transform=from_origin(300000, 5800000, 10, 10))
        with rasterio.open(path, "w", **profile) as dst:
            for r in range(0, n, 2048):
                h = min(2048, n - r)
                block = np.kron(rng.integers(0, 4, (h // 16 + 1, n // 16 + 1)), np.ones((16, 16), np.uint8))
                dst.write(block[:h, :n].astype(np.uint8)[None], window=Window(0, r, n, h))
        from geoseg.io import class_tags

        with rasterio.open(path, "r+") as dst:
            dst.update_tags(**class_tags(CLASSES, "bench"))
        extent = shapely.box(300000, 5800000 - n * 10, 300000 + n * 10, 5800000)
        points = shapely.multipoints(np.column_stack([rng.uniform(300000, 300000 + n * 10, args.zones),
                                                      rng.uniform(5800000 - n * 10, 5800000, args.zones)]))
        cells = shapely.intersection(np.asarray(shapely.get_parts(shapely.voronoi_polygons(points, extend_to=extent))),
                                     extent)
        zones = write_zones(Path(tmp) / "zones.gpkg", list(cells), [f"z{i}" for i in range(len(cells))])
        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
        client = Client(cluster)
        t = time.perf_counter()
        with rasterio.open(path) as src:
            for r in range(0, n, 1024):
                for c in range(0, n, 1024):
                    w = Window(c, r, min(1024, n - c), min(1024, n - r))
                    src.read(1, window=w)
                    src.read_masks(1, window=w)
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        whole = stats(path, client=client)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        zoned = stats(path, zones=zones, zone_field="name", client=client)
        zones_s = time.perf_counter() - t
        client.close()
        cluster.close()
        valid = sum(r["area_m2"] for r in whole.rows)
        result.update({
            "size": n, "zones": len(cells), "read_once_s": round(read_s, 2), "stats_s": round(plain_s, 2),
            "stats_zones_s": round(zones_s, 2), "stats_ratio": round(plain_s / read_s, 2),
            "stats_zones_ratio": round(zones_s / read_s, 2),
            "zones_area_rel_error": abs(sum(r["area_m2"] for r in zoned.rows) - valid) / valid,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        })
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
