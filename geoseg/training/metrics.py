"""Confusion matrices and the scores derived from them, shared by training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K counts (rows reference, columns predicted) over pixels whose both indices are in range."""
    r = reference.ravel().astype(np.int64)
    p = predicted.ravel().astype(np.int64)
    keep = (r >= 0) & (r < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(r[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


@dataclass
class Scores:
    """Per-class IoU, precision, recall, F1; mean IoU over classes present; accuracy and kappa."""

    confusion: np.ndarray
    names: list[str]

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(1)

    def _ratio(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)

    @property
    def iou(self) -> np.ndarray:
        tp = np.diag(self.confusion).astype(float)
        return self._ratio(tp, self.confusion.sum(0) + self.confusion.sum(1) - tp)

    @property
    def precision(self) -> np.ndarray:
        return self._ratio(np.diag(self.confusion).astype(float), self.confusion.sum(0))

    @property
    def recall(self) -> np.ndarray:
        return self._ratio(np.diag(self.confusion).astype(float), self.confusion.sum(1))

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        with np.errstate(invalid="ignore"):
            return 2 * p * r / (p + r)

    @property
    def miou(self) -> float:
        """Mean IoU over classes present in the reference (absent classes would only add noise)."""
        iou = self.iou[self.support > 0]
        return float(np.nanmean(iou)) if iou.size else float("nan")

    @property
    def overall_accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    @property
    def kappa(self) -> float:
        total = self.confusion.sum()
        if not total:
            return float("nan")
        po = np.trace(self.confusion) / total
        pe = float((self.confusion.sum(0) * self.confusion.sum(1)).sum()) / total**2
        return float((po - pe) / (1 - pe)) if pe < 1 else float("nan")

    def as_dict(self) -> dict[str, object]:
        def clean(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else round(float(v), 6) for v in a]

        return {
            "classes": self.names,
            "miou": None if np.isnan(self.miou) else round(self.miou, 6),
            "overall_accuracy": None
            if np.isnan(self.overall_accuracy)
            else round(self.overall_accuracy, 6),
            "kappa": None if np.isnan(self.kappa) else round(self.kappa, 6),
            "iou": clean(self.iou),
            "precision": clean(self.precision),
            "recall": clean(self.recall),
            "f1": clean(self.f1),
            "support": [int(v) for v in self.support],
            "confusion": self.confusion.astype(int).tolist(),
        }

    def table(self) -> str:
        """A readable per-class table with the summary underneath."""
        width = max([len(n) for n in self.names] + [5])
        lines = [
            f"{'class':<{width}}  {'IoU':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'pixels':>10}"
        ]
        for i, n in enumerate(self.names):
            vals = [self.iou[i], self.precision[i], self.recall[i], self.f1[i]]
            txt = " ".join("   n/a" if np.isnan(v) else f"{v:6.3f}" for v in vals)
            lines.append(f"{n:<{width}}  {txt} {int(self.support[i]):>10}")
        lines.append(
            f"mIoU {self.miou:.4f}   overall accuracy {self.overall_accuracy:.4f}   "
            f"kappa {self.kappa:.4f}   pixels {int(self.confusion.sum())}"
        )
        return "\n".join(lines)


def scores(confusion: np.ndarray, names: Sequence[str]) -> Scores:
    return Scores(np.asarray(confusion), list(names))
