"""Per-pixel random-forest baseline against a trained geoseg model, on the same validation chips.

    python benchmarks/s2_baseline.py CHIPS_DIR MODEL.pt

Trains a random forest on the band values of (up to 300,000) labelled train-split pixels,
scores it on every labelled validation pixel, and prints it beside the model's own validation
scores (recomputed here on the same chips). Needs the 'baseline' extra (scikit-learn).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import geoseg
from geoseg.chips import load_manifest, manifest_classes
from geoseg.datasets import IGNORE_INDEX, ChipDataset
from geoseg.metrics import Scores, confusion_matrix
from geoseg.train import validate


def main(chips_dir: str, model_path: str, max_pixels: int = 300_000, seed: int = 0) -> None:
    from sklearn.ensemble import RandomForestClassifier

    manifest = load_manifest(chips_dir)
    names = [c.name for c in manifest_classes(manifest)]
    train = ChipDataset(chips_dir, manifest, "train")
    val = ChipDataset(chips_dir, manifest, "val")

    def pixels(ds: ChipDataset) -> tuple[np.ndarray, np.ndarray]:
        x = ds.images.transpose(0, 2, 3, 1).reshape(-1, ds.images.shape[1])
        y = ds.labels.reshape(-1)
        keep = y != IGNORE_INDEX
        return x[keep], y[keep]

    xt, yt = pixels(train)
    rng = np.random.default_rng(seed)
    if len(yt) > max_pixels:
        pick = rng.choice(len(yt), max_pixels, replace=False)
        xt, yt = xt[pick], yt[pick]
    rf = RandomForestClassifier(n_estimators=100, min_samples_leaf=5, n_jobs=-1, random_state=seed)
    rf.fit(xt, yt)
    xv, yv = pixels(val)
    rf_scores = Scores(confusion_matrix(yv, rf.predict(xv), len(names)), names)
    model = geoseg.load_model(model_path)
    net_scores = validate(model.network, val, torch.device("cpu"), names, 16)
    print(f"validation pixels: {len(yv)}  (train pixels for the forest: {len(yt)})")
    print(f"{'class':<14}{'RF IoU':>8}{'U-Net IoU':>11}")
    for i, n in enumerate(names):
        print(f"{n:<14}{rf_scores.iou[i]:>8.3f}{net_scores.iou[i]:>11.3f}")
    print(f"{'mIoU':<14}{rf_scores.miou:>8.3f}{net_scores.miou:>11.3f}")
    print(f"{'OA':<14}{rf_scores.overall_accuracy:>8.3f}{net_scores.overall_accuracy:>11.3f}")
    print(f"{'kappa':<14}{rf_scores.kappa:>8.3f}{net_scores.kappa:>11.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
