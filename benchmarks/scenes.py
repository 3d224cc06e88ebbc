"""Band files against the stacked scene: what reading a scene through geoseg's in-memory VRT costs.

    python benchmarks/scenes.py [--repeat 2]

Splits the Sentinel-2 scene of ../shared/data (4 x 768 x 1536, uint16) into one GeoTIFF per band
(same tiling and compression) and a copy with NIR at 20 m, in a temporary folder, then runs
``geoseg predict`` (built-in model, one local worker) on the stack, the 10 m band files (given out
of order), the bands with 20 m NIR, and a STAC item over the 10 m files, alternating, each in
its own process. Prints wall-time ratios to the stacked scene (one run, same machine) and the
share of pixels equal to the stacked scene's classes; writes benchmarks/scenes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from common import geoseg_command
from rasterio.enums import Resampling

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "labeled" / "s2_brandenburg_osm" / "image.tif"
BANDS = ["B02", "B03", "B04", "B08"]


def make_inputs(folder: Path) -> dict[str, list[str]]:
    """The stack, its band files at 10 m, with NIR at 20 m, and a STAC item over the 10 m files."""
    with rasterio.open(IMAGE) as src:
        profile = {**src.profile, "count": 1, "interleave": "band"}
        data = src.read()
        nir20 = src.read(
            4, out_shape=(src.height // 2, src.width // 2), resampling=Resampling.average
        )
        t20 = src.transform * src.transform.scale(2, 2)
    files = []
    for i, name in enumerate(BANDS):
        path = folder / f"T33UVU_20170216_{name}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data[i], 1)
        files.append(str(path))
    coarse = folder / "T33UVU_20170216_B08_20m.tif"
    with rasterio.open(
        coarse,
        "w",
        **{
            **profile,
            "width": nir20.shape[1],
            "height": nir20.shape[0],
            "transform": t20,
            "blockxsize": 128,
            "blockysize": 128,
        },
    ) as dst:
        dst.write(nir20, 1)
    item = folder / "item.json"
    item.write_text(
        json.dumps(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": "S2A_33UVU_20170216",
                "geometry": None,
                "properties": {"datetime": "2017-02-16T10:00:00Z"},
                "links": [],
                "assets": {
                    n: {
                        "href": Path(f).name,
                        "type": "image/tiff; application=geotiff",
                        "eo:bands": [{"name": n}],
                    }
                    for n, f in zip(BANDS, files)
                },
            }
        )
    )
    return {
        "stack": [str(IMAGE)],
        "band files 10 m": files[::-1],
        "band files, NIR 20 m": files[:3] + [str(coarse)],
        "STAC item": [str(item)],
    }


def run(inputs: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        geoseg_command(
            "predict", *inputs, "-o", str(out), "--workers", "1", "--overwrite", "--quiet"
        ),
        check=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not IMAGE.exists():
        sys.exit(f"{IMAGE} not found: this benchmark reads ../shared/data")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = make_inputs(folder)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, inputs in cases.items():
                times[name].append(run(inputs, folder / f"{name.replace(' ', '_')}.tif"))
        with rasterio.open(folder / "stack.tif") as src:
            want = src.read(1)
        rows = []
        base = statistics.median(times["stack"])
        for name in cases:
            with rasterio.open(folder / f"{name.replace(' ', '_')}.tif") as src:
                equal = float((src.read(1) == want).mean())
            med = statistics.median(times[name])
            rows.append(
                {
                    "case": name,
                    "seconds": round(med, 2),
                    "ratio_to_stack": round(med / base, 3),
                    "pixels_equal_to_stack": round(equal, 4),
                }
            )
    print(f"{'case':<24} {'s':>7} {'ratio':>7} {'equal':>7}")
    for r in rows:
        print(
            f"{r['case']:<24} {r['seconds']:>7.2f} {r['ratio_to_stack']:>7.3f} {r['pixels_equal_to_stack']:>7.4f}"
        )
    (ROOT / "benchmarks" / "scenes.json").write_text(
        json.dumps(
            {
                "scene": IMAGE.name,
                "repeat": args.repeat,
                "cpu_count": __import__("os").cpu_count(),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
