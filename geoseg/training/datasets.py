"""A torch Dataset over a chips folder: normalized images, labels as class indices, D4 and jitter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch.utils.data import Dataset

from geoseg.classes import IGNORE_VALUE
from geoseg.errors import ChipError, first_line
from geoseg.normalize import normalize
from geoseg.training.chips import iter_chips, manifest_classes


class ChipDataset(Dataset):
    """Chips of one split, held in memory (chips are small; reading them once keeps epochs fast).

    Labels become class indices 0..K-1; "not labelled" and image nodata become IGNORE_VALUE.
    """

    def __init__(
        self,
        root: str | Path,
        manifest: dict[str, Any],
        split: str,
        augment: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        self.root = Path(root)
        self.augment = augment
        classes = manifest_classes(manifest)
        lut = np.full(256, IGNORE_VALUE, dtype=np.uint8)
        for i, c in enumerate(classes):
            lut[c.value] = i
        mean = mean or manifest["stats"]["mean"]
        std = std or manifest["stats"]["std"]
        self.chips = list(iter_chips(manifest, split))
        self.weights = [float(c.get("weight", 1.0)) for c in self.chips]
        images, labels = [], []
        for c in self.chips:
            try:
                with rasterio.open(self.root / "images" / f"{c['id']}.tif") as src:
                    data = src.read()
                    valid = src.dataset_mask() > 0
                with rasterio.open(self.root / "labels" / f"{c['id']}.tif") as src:
                    lab = src.read(1)
            except rasterio.errors.RasterioIOError as exc:
                raise ChipError(
                    f"chip {c['id']} listed in {root} cannot be read ({first_line(exc)}); "
                    "the chips folder is damaged: re-run 'geoseg chip'"
                ) from None
            if np.issubdtype(data.dtype, np.floating):
                valid &= ~np.isnan(data).any(axis=0)
            images.append(normalize(data, valid, mean, std))
            t = lut[lab]
            t[~valid] = IGNORE_VALUE
            labels.append(t)
        self.images = np.stack(images) if images else np.zeros((0, len(mean), 1, 1), np.float32)
        self.labels = np.stack(labels) if labels else np.zeros((0, 1, 1), np.uint8)

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.images[i])
        y = torch.from_numpy(self.labels[i].astype(np.int64))
        if self.augment:
            x, y = d4_augment(x, y)
            x = radiometric_jitter(x)
        return x, y


def d4_augment(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the eight flips and 90-degree rotations, the same for image and label."""
    k = int(torch.randint(0, 4, ()))
    if k:
        x = torch.rot90(x, k, dims=(-2, -1))
        y = torch.rot90(y, k, dims=(-2, -1))
    if bool(torch.randint(0, 2, ())):
        x = torch.flip(x, dims=(-1,))
        y = torch.flip(y, dims=(-1,))
    return x.contiguous(), y.contiguous()


def radiometric_jitter(x: torch.Tensor, gain: float = 0.1, bias: float = 0.1) -> torch.Tensor:
    """Mild per-band gain and offset in normalized units (sensor and season variation)."""
    c = x.shape[0]
    g = 1.0 + (torch.rand(c, 1, 1) * 2 - 1) * gain
    b = (torch.rand(c, 1, 1) * 2 - 1) * bias
    return x * g + b
