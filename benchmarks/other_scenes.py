"""The training workflow on the other labeled scenes in ../shared/data: chip, train briefly,
score on the spatially separate validation chips, beside a random forest on the same pixels.

    python benchmarks/other_scenes.py [--epochs 25]

Prints one row per scene and writes benchmarks/other_scenes.json; docs/training.md discusses it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import random_forest

from geoseg.dask.session import connect
from geoseg.errors import GeosegError
from geoseg.training.chips import load_manifest, make_chips
from geoseg.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "labeled"

SCENES = [
    # name, folder, bands, chip size, ignore value, note (nrcan flags its background as nodata)
    ("mass_buildings", "mass_buildings/22978945", None, 128, None, "aerial RGB 1 m, buildings"),
    (
        "nrcan_tiles",
        "nrcan_tiles/tile1",
        None,
        128,
        None,
        "aerial RGB 0.3 m, buildings; label nodata=0",
    ),
    (
        "nb_bakerlake",
        "nb_bakerlake/2of2",
        None,
        64,
        0,
        "aerial RGB 0.5 m, 5 classes, partial labels",
    ),
    (
        "spacenet_sn4_atlanta_pan",
        "spacenet_sn4_atlanta_pan",
        None,
        128,
        None,
        "WorldView-2 pan 0.5 m, buildings",
    ),
    (
        "spacenet_sn7_mosaic",
        "spacenet_sn7_mosaic",
        "1,2,3",
        128,
        None,
        "Planet RGB 4.8 m, buildings",
    ),
    (
        "spacenet_sn3_vegas_roads",
        "spacenet_sn3_vegas_roads",
        None,
        128,
        None,
        "WorldView-3 pan 0.3 m (EPSG:4326), some roads",
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--only", default=None, help="comma-separated scene names")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="geoseg-scenes-"))
    client, cluster = connect(None, 1, processes=False)
    rows = []
    try:
        for name, folder, bands, size, ignore, note in SCENES:
            if args.only and name not in args.only.split(","):
                continue
            root = DATA / folder
            chips = work / name
            t0 = time.perf_counter()
            try:
                row = run_scene(
                    name, root, chips, work, bands, size, ignore, note, args.epochs, client
                )
            except GeosegError as exc:
                row = {"scene": name, "note": note, "error": str(exc)}
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        client.close()
        cluster.close()
    print(f"\n{'scene':<26}{'chips t/v':>10}{'U-Net mIoU':>12}{'RF mIoU':>9}{'s':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['scene']:<26}  {r['error']}")
            continue
        print(
            f"{r['scene']:<26}{str(r['train_chips']) + '/' + str(r['val_chips']):>10}"
            f"{r['unet_miou']:>12.3f}{r['rf_miou']:>9.3f}{r['seconds']:>6.0f}"
        )
    out = ROOT / "benchmarks" / "other_scenes.json"
    if args.only and out.exists():  # update the named scenes, keep the others
        old = {r["scene"]: r for r in json.loads(out.read_text())}
        old.update({r["scene"]: r for r in rows})
        rows = [old[name] for name, *_ in SCENES if name in old]
    out.write_text(json.dumps(rows, indent=1))


def run_scene(
    name: str,
    root: Path,
    chips: Path,
    work: Path,
    bands: str | None,
    size: int,
    ignore: int | None,
    note: str,
    epochs: int,
    client: object,
) -> dict:
    """Chip, train and score one scene."""
    make_chips(
        [(str(root / "image.tif"), str(root / "label.tif"))],
        chips,
        size=size,
        stride=size // 2,
        bands=bands,
        ignore_value=ignore,
        split_block=2 * size,
        val_fraction=0.25,
        min_labeled=0.05,
        max_nodata=0.5,
        client=client,
        label_nodata_is_class=name == "nrcan_tiles",
    )
    m = load_manifest(chips)
    torch.manual_seed(0)
    res = train(
        chips, work / f"{name}.pt", arch="unet-small", epochs=epochs, batch_size=8, lr=2e-3, seed=0
    )
    rf = random_forest(chips, max_pixels=200_000, seed=0).scores
    val = res.best_scores
    return {
        "scene": name,
        "note": note,
        "classes": [c["name"] for c in m["classes"]],
        "train_chips": sum(c["split"] == "train" for c in m["chips"]),
        "val_chips": sum(c["split"] == "val" for c in m["chips"]),
        "unet_miou": val.miou if val else None,
        "unet_iou": val.iou.tolist() if val else None,
        "rf_miou": rf.miou,
        "rf_iou": rf.iou.tolist(),
    }


if __name__ == "__main__":
    main()
