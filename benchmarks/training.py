"""The training recipe, measured: ``geoseg chip`` + ``geoseg train`` with no tuning flags
against a per-pixel random forest, on every labeled scene in ../shared/data.

    nice python benchmarks/training.py [--only s2_brandenburg_osm,...] [--threads 2]
    nice python benchmarks/training.py --only nb_bakerlake --chip-args '{"stride": 32}' --out /tmp/t.json
    nice python benchmarks/training.py --seeds 0,1,2     # each scene trained with three seeds

Each scene is split in space: one edge quarter is the test area, used neither for training nor
for choosing the epoch: the last quarter along the longer side, unless its labels miss a class
of the scene (under 0.5 % of that class's pixels), then the first such quarter of: the first
along the longer side, the last and the first along the shorter side (:func:`choose_holdout`;
decided from the labels alone, before training). The other three quarters are chipped and
trained on with the defaults (chip size, split blocks, epochs, early stopping: all automatic);
the model then predicts the test area through ``geoseg.predict`` (tiled, mirror-padded edges).
The forest (200 trees) learns the band values of the same labelled train-split pixels (at most
200,000, drawn at random) and classifies every test pixel. Both are scored on the labelled
test pixels. Writes benchmarks/training.json (one row per scene, updated in place with --only);
docs/training.md holds the table. Needs the 'baseline' extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from common import train_pixels
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

import geoseg
from geoseg.dask.session import dask_session
from geoseg.engines.infer import normalize
from geoseg.training.chips import load_manifest, make_chips, manifest_classes
from geoseg.training.metrics import Scores, confusion_matrix
from geoseg.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "labeled"
OUT = ROOT / "benchmarks" / "training.json"
RF_TREES = 200
RF_PIXELS = 200_000

#: name, folder, bands, ignore value, whether the label raster's nodata is a class: facts of
#: the data (README of ../shared/data), not tuning
SCENES: list[tuple[str, str, str | None, int | None, bool]] = [
    ("nb_bakerlake", "nb_bakerlake/2of2", None, 0, False),
    ("nrcan_tiles", "nrcan_tiles/tile1", None, None, True),
    ("mass_buildings", "mass_buildings/22978945", None, None, False),
    ("spacenet_sn7_mosaic", "spacenet_sn7_mosaic", "1,2,3", None, False),
    ("spacenet_sn4_atlanta_pan", "spacenet_sn4_atlanta_pan", None, None, False),
    ("s2_brandenburg_osm", "s2_brandenburg_osm", None, 0, False),
    ("spacenet_sn3_vegas_roads", "spacenet_sn3_vegas_roads", None, None, False),
]


def crop(src_path: Path, window: Window, dst_path: Path, drop_nodata: bool = False) -> None:
    """Write ``window`` of a raster as its own GeoTIFF (same CRS, shifted transform)."""
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        profile = src.profile.copy()
        profile.update(
            width=int(window.width),
            height=int(window.height),
            transform=window_transform(window, src.transform),
            tiled=False,
            compress="deflate",
        )
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        if drop_nodata:
            profile["nodata"] = None
        descriptions = src.descriptions
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions


#: Minimum share of a class's labelled pixels in the scene that the test area must hold for the
#: class to count as present there.
HOLDOUT_MIN_SHARE = 0.005


def quarters(h: int, w: int) -> list[tuple[str, Window, Window]]:
    """The candidate hold-outs, in the order they are tried: the last quarter along the longer
    side, the first one, then the last and first quarters along the shorter side; each with the
    train area (the other three quarters, one rectangle)."""

    def along(length: int, cols: bool) -> list[tuple[str, Window, Window]]:
        cut, rest = (length * 3) // 4, length // 4

        def win(start: int, size: int) -> Window:
            return Window(start, 0, size, h) if cols else Window(0, start, w, size)

        side = "columns" if cols else "rows"
        return [
            (f"last quarter of {side}", win(0, cut), win(cut, length - cut)),
            (f"first quarter of {side}", win(rest, length - rest), win(0, rest)),
        ]

    longer, shorter = (
        (along(w, True), along(h, False)) if w >= h else (along(h, False), along(w, True))
    )
    return longer + shorter


def label_classes(label: np.ndarray, ignore: int | None, nodata: float | None) -> dict[int, int]:
    """Labelled pixels per class value (the ignore value and ``nodata`` left out)."""
    keep = np.ones(label.shape, bool)
    if ignore is not None:
        keep &= label != ignore
    if nodata is not None:
        keep &= label != nodata
    values, counts = np.unique(label[keep], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def choose_holdout(
    root: Path, ignore: int | None, nodata_is_class: bool
) -> tuple[str, Window, Window]:
    """The hold-out: the first candidate of :func:`quarters` whose labels hold every class of the
    scene (at least :data:`HOLDOUT_MIN_SHARE` of its pixels), else the one holding the most
    classes. Decided from the labels alone, before any model is trained: a hold-out without a
    class cannot measure it (nrcan_tiles' last quarter holds no building)."""
    with rasterio.open(root / "label.tif") as src:
        label = src.read(1)
        nodata = (
            None if nodata_is_class else src.nodata
        )  # as a class, nodata counts like the others
    scene = label_classes(label, ignore, nodata)
    best: tuple[int, str, Window, Window] | None = None
    for name, train_win, test_win in quarters(*label.shape):
        rows, cols = test_win.toslices()
        held = label_classes(label[rows, cols], ignore, nodata)
        covered = sum(held.get(v, 0) >= max(1, HOLDOUT_MIN_SHARE * n) for v, n in scene.items())
        if covered == len(scene):
            return name, train_win, test_win
        if best is None or covered > best[0]:
            best = (covered, name, train_win, test_win)
    assert best is not None
    return best[1], best[2], best[3]


def split_scene(
    root: Path, work: Path, ignore: int | None, label_nodata_is_class: bool
) -> dict[str, Any]:
    """Train area and test area (:func:`choose_holdout`), cropped to their own files."""
    name, train_win, test_win = choose_holdout(root, ignore, label_nodata_is_class)
    out: dict[str, Any] = {"holdout": name}
    for area, win in (("train", train_win), ("test", test_win)):
        crop(root / "image.tif", win, work / f"{area}-image.tif")
        crop(root / "label.tif", win, work / f"{area}-label.tif", drop_nodata=label_nodata_is_class)
        out[f"{area}-image"] = work / f"{area}-image.tif"
        out[f"{area}-label"] = work / f"{area}-label.tif"
    return out


def holdout_pixels(
    paths: dict[str, Any],
    bands: list[int],
    values: list[int],
    ignore: int,
    mean: list[float],
    std: list[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized band values, class indices (-1: not scored) and validity of the test area."""
    with rasterio.open(paths["test-image"]) as src:
        data = src.read(bands)
        valid = src.dataset_mask() > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    with rasterio.open(paths["test-label"]) as src:
        lab = src.read(1)
        nodata = src.nodata
    lut = np.full(256, -1, np.int64)
    for i, v in enumerate(values):
        lut[v] = i
    target = lut[lab.astype(np.int64).clip(0, 255)]
    target[(lab == ignore) | ~valid] = -1
    if nodata is not None:
        target[lab == nodata] = -1
    return normalize(data, valid, mean, std), target, valid


def forest(
    chips: Path, x_test: np.ndarray, y_test: np.ndarray, names: list[str], threads: int
) -> Scores:
    from sklearn.ensemble import RandomForestClassifier

    x, y = train_pixels(chips, RF_PIXELS, 0)
    rf = RandomForestClassifier(n_estimators=RF_TREES, n_jobs=threads, random_state=0).fit(x, y)
    flat = x_test.reshape(x_test.shape[0], -1).T
    scored = y_test.reshape(-1) >= 0
    pred = rf.predict(flat[scored])
    return Scores(confusion_matrix(y_test.reshape(-1)[scored], pred, len(names)), names)


def run_scene(
    name: str,
    folder: str,
    bands: str | None,
    ignore: int | None,
    nodata_is_class: bool,
    work: Path,
    client: Any,
    threads: int,
    chip_args: dict[str, Any] | None = None,
    train_args: dict[str, Any] | None = None,
    seed: int = 0,
    rf: Scores | None = None,
) -> tuple[dict[str, Any], Scores]:
    """One scene with training seed ``seed``: the row, and the forest's scores (``rf``: scores of
    the same split already fitted, reused: the forest's own seed is fixed)."""
    root = DATA / folder
    paths = split_scene(root, work, ignore, nodata_is_class)
    chips = work / "chips"
    t0 = time.perf_counter()
    make_chips(
        [(str(paths["train-image"]), str(paths["train-label"]))],
        chips,
        bands=bands,
        ignore_value=ignore,
        client=client,
        **(chip_args or {}),
    )
    m = load_manifest(chips)
    classes = manifest_classes(m)
    names = [c.name for c in classes]
    values = [c.value for c in classes]
    model = work / "model.pt"
    result = train(chips, model, seed=seed, quiet=False, **(train_args or {}))
    train_s = time.perf_counter() - t0
    pred = work / "test-classes.tif"
    geoseg.predict(
        str(paths["test-image"]), str(pred), model=str(model), client=client, bands=bands
    )
    band_list = [int(b) for b in bands.split(",")] if bands else list(range(1, len(m["bands"]) + 1))
    x_test, y_test, _ = holdout_pixels(
        paths, band_list, values, m["ignore_value"], m["stats"]["mean"], m["stats"]["std"]
    )
    with rasterio.open(pred) as src:
        p = src.read(1)
    lut = np.full(256, 0, np.int64)
    for i, v in enumerate(values):
        lut[v] = i
    scored = y_test >= 0
    net = Scores(confusion_matrix(y_test[scored], lut[p[scored]], len(names)), names)
    t1 = time.perf_counter()
    if rf is None:
        rf = forest(chips, x_test, y_test, names, threads)
    rf_s = time.perf_counter() - t1
    split = {s: sum(c["split"] == s for c in m["chips"]) for s in ("train", "val")}
    return {
        "seed": seed,
        "scene": name,
        "holdout": paths["holdout"],
        "classes": names,
        "chip_size": m["size"],
        "chips_train": split["train"],
        "chips_val": split["val"],
        "test_pixels": int(scored.sum()),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "val_miou": result.best_miou,
        "net_miou": net.miou,
        "net_iou": [round(float(v), 4) for v in net.iou],
        "rf_miou": rf.miou,
        "rf_iou": [round(float(v), 4) for v in rf.iou],
        "ratio": net.miou / rf.miou if rf.miou > 0 else None,
        "train_seconds": round(train_s),
        "forest_seconds": round(rf_s),
    }, rf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="comma-separated scene names")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--chip-args",
        type=json.loads,
        default=None,
        help="extra make_chips keywords as JSON, to try a lever (e.g. '{\"oversample_rare\": 2}')",
    )
    ap.add_argument(
        "--train-args", type=json.loads, default=None, help="extra train keywords as JSON"
    )
    ap.add_argument(
        "--seeds",
        default="0",
        help="training seeds, comma-separated: each scene is trained once per seed "
        "(same chips, same forest); the row keeps the first seed's run and every seed's scores",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help=f"results file (default {OUT.name}; use another for trials)",
    )
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    out = args.out
    rows = json.loads(out.read_text()) if out.exists() else []
    by_name = {r["scene"]: r for r in rows}
    with dask_session(None, None, 1, processes=False) as session:
        for name, folder, bands, ignore, nodata_is_class in SCENES:
            if args.only and name not in args.only.split(","):
                continue
            runs: list[dict[str, Any]] = []
            rf: Scores | None = None
            for seed in seeds:
                with tempfile.TemporaryDirectory(prefix=f"geoseg-training-{name}-") as tmp:
                    run, rf = run_scene(
                        name,
                        folder,
                        bands,
                        ignore,
                        nodata_is_class,
                        Path(tmp),
                        session.client,
                        args.threads,
                        args.chip_args,
                        args.train_args,
                        seed,
                        rf,
                    )
                runs.append(run)
            row = runs[0]
            if len(runs) > 1:  # the first seed's row, and every seed's scores
                ratios = [r["ratio"] or 0.0 for r in runs]
                row["seed_runs"] = [
                    {
                        k: r[k]
                        for k in (
                            "seed",
                            "net_miou",
                            "net_iou",
                            "ratio",
                            "epochs_run",
                            "best_epoch",
                        )
                    }
                    for r in runs
                ]
                row["ratio_mean"], row["ratio_min"], row["ratio_max"] = (
                    float(np.mean(ratios)),
                    min(ratios),
                    max(ratios),
                )
            if args.chip_args or args.train_args:
                row["chip_args"], row["train_args"] = args.chip_args, args.train_args
            print(json.dumps(row), flush=True)
            by_name[name] = row
            out.write_text(json.dumps([by_name[n] for n, *_ in SCENES if n in by_name], indent=1))
    print(
        f"\n{'scene':<26}{'chip':>5}{'t/v':>8}{'epochs':>7}{'net mIoU':>9}{'RF mIoU':>8}{'ratio':>6}"
        f"{'seeds: mean (min-max)':>24}"
    )
    for r in (by_name[n] for n, *_ in SCENES if n in by_name):
        spread = (
            f"{r['ratio_mean']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            if "ratio_mean" in r
            else ""
        )
        print(
            f"{r['scene']:<26}{r['chip_size']:>5}{str(r['chips_train']) + '/' + str(r['chips_val']):>8}"
            f"{r['epochs_run']:>7}{r['net_miou']:>9.3f}{r['rf_miou']:>8.3f}{(r['ratio'] or 0):>6.2f}{spread:>24}"
        )


if __name__ == "__main__":
    main()
