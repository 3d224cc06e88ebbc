"""What several benchmarks share: the geoseg command line in a fresh interpreter, a peak-memory
poller, the GeoTIFF profile of their synthetic rasters, and the random-forest pixel baseline.

Imported by the benchmarks as ``common`` (``python benchmarks/X.py`` puts this folder first on
``sys.path``); the tests never import it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def geoseg_command(*args: str) -> list[str]:
    """``geoseg ARGS`` run by this interpreter (the checkout's geoseg, whatever is on PATH)."""
    return [sys.executable, "-m", "geoseg.cli.main", *args]


def predict_command(
    scene: str | Path, out: str | Path, model: str | Path | None, extra: list[str]
) -> list[str]:
    """``geoseg predict SCENE -o OUT --overwrite --quiet`` (``--model`` when given), then ``extra``."""
    model_args = ["--model", str(model)] if model else []
    return geoseg_command(
        "predict", str(scene), "-o", str(out), "--overwrite", "--quiet", *model_args, *extra
    )


class PeakRSS(threading.Thread):
    """The highest RSS of a process (``tree``: summed with all its descendants, worker
    processes too), sampled every ``interval`` seconds from :meth:`start` to :meth:`stop`."""

    def __init__(self, pid: int, tree: bool = False, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.tree = tree
        self.interval = interval
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                procs = [self.proc, *(self.proc.children(recursive=True) if self.tree else [])]
            except psutil.Error:  # the process is gone
                return
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self.running = False
        self.join()
        return self.peak


def tiled_profile(
    size: int, count: int, dtype: str, origin: tuple[float, float], **extra: Any
) -> dict[str, Any]:
    """The GeoTIFF profile of a benchmark's synthetic raster: ``size`` x ``size`` pixels of
    10 m in EPSG:32633 from ``origin`` (west, north), tiled 512, DEFLATE; ``extra`` adds to it."""
    from rasterio.transform import from_origin

    return dict(
        driver="GTiff",
        width=size,
        height=size,
        count=count,
        dtype=dtype,
        crs="EPSG:32633",
        transform=from_origin(*origin, 10, 10),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        **extra,
    )


@dataclass
class Baseline:
    """The random forest's scores on the validation pixels, and how many pixels and chips."""

    scores: Any  # geoseg.training.metrics.Scores
    val_chips: int
    val_pixels: int
    train_pixels: int


def labelled_pixels(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Band values (pixels x bands) and classes of a ``ChipDataset``'s labelled pixels."""
    from geoseg.classes import IGNORE_VALUE

    x = ds.images.transpose(0, 2, 3, 1).reshape(-1, ds.images.shape[1])
    y = ds.labels.reshape(-1)
    keep = y != IGNORE_VALUE
    return x[keep], y[keep]


def train_pixels(chips: str | Path, max_pixels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_pixels`` labelled pixels of a chips folder's train split, drawn with ``seed``:
    what the random forests learn from."""
    from geoseg.training.chips import load_manifest
    from geoseg.training.datasets import ChipDataset

    x, y = labelled_pixels(ChipDataset(chips, load_manifest(chips), "train"))
    rng = np.random.default_rng(seed)
    if len(y) > max_pixels:
        pick = rng.choice(len(y), max_pixels, replace=False)
        x, y = x[pick], y[pick]
    return x, y


def random_forest(chips: str | Path, max_pixels: int, seed: int) -> Baseline:
    """The per-pixel baseline: a random forest on the band values of (up to ``max_pixels``)
    labelled train-split pixels of a chips folder, scored on every labelled validation pixel."""
    from sklearn.ensemble import RandomForestClassifier

    from geoseg.training.chips import load_manifest, manifest_classes
    from geoseg.training.datasets import ChipDataset
    from geoseg.training.metrics import Scores, confusion_matrix

    manifest = load_manifest(chips)
    names = [c.name for c in manifest_classes(manifest)]
    xt, yt = train_pixels(chips, max_pixels, seed)
    rf = RandomForestClassifier(n_estimators=100, min_samples_leaf=5, n_jobs=-1, random_state=seed)
    rf.fit(xt, yt)
    val = ChipDataset(chips, manifest, "val")
    xv, yv = labelled_pixels(val)
    scores = Scores(confusion_matrix(yv, rf.predict(xv), len(names)), names)
    return Baseline(scores, len(val), len(yv), len(yt))
