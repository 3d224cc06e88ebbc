"""Per-pixel random-forest baseline against trained geoseg models, on the same validation chips.

    python benchmarks/s2_baseline.py CHIPS_DIR MODEL.pt [MODEL2.pt ...]

Trains a random forest on the band values of (up to 300,000) labelled train-split pixels,
scores it on every labelled validation pixel, and prints it beside each model's scores on the
same chips (each model normalizes the chips with its own mean and std, as predict would).
Comparing two models is fair only on validation blocks neither trained on: the built-in
model's recipe (workflows/builtin-model.yaml) draws the previous model's validation blocks for
that reason (README.md, model card). Needs the 'baseline' extra (scikit-learn).
"""

from __future__ import annotations

import sys

import torch
from common import random_forest

import geoseg
from geoseg.training.chips import load_manifest, manifest_classes
from geoseg.training.datasets import ChipDataset
from geoseg.training.epoch import validate


def main(chips_dir: str, model_paths: list[str], max_pixels: int = 300_000, seed: int = 0) -> None:
    manifest = load_manifest(chips_dir)
    names = [c.name for c in manifest_classes(manifest)]
    rf = random_forest(chips_dir, max_pixels, seed)
    columns = [("random forest", rf.scores)]
    for path in model_paths:
        model = geoseg.load_model(path)
        norm = model.normalization
        own = ChipDataset(
            chips_dir, manifest, "val", mean=list(norm["mean"]), std=list(norm["std"])
        )
        columns.append((path, validate(model.network, own, torch.device("cpu"), names, 16)))
    print(
        f"validation chips: {rf.val_chips}, pixels: {rf.val_pixels}  (train pixels for the forest: "
        f"{rf.train_pixels})"
    )
    for i, (label, _) in enumerate(columns):
        print(f"  [{i}] {label}")
    print(f"{'class':<14}" + "".join(f"{f'[{i}] IoU':>10}" for i in range(len(columns))))
    for j, n in enumerate(names):
        print(f"{n:<14}" + "".join(f"{s.iou[j]:>10.3f}" for _, s in columns))
    for key, get in (
        ("mIoU", lambda s: s.miou),
        ("OA", lambda s: s.overall_accuracy),
        ("kappa", lambda s: s.kappa),
    ):
        print(f"{key:<14}" + "".join(f"{get(s):>10.3f}" for _, s in columns))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
