"""From a tile's logits to what is written: crop the margin, argmax to class values, probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from rasterio.windows import Window

from geoseg.io import class_raster_dtype
from geoseg.tiling import Tile


@dataclass
class TileResult:
    """The kept core of one tile: class values, and optionally uint8 probabilities and logits."""

    core: Window
    classes: np.ndarray
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    error: str | None = None


def crop_core(logits: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The core of a K x H x W tile output; margins were context only."""
    r, c = tile.core_offset
    h, w = int(tile.core.height), int(tile.core.width)
    return logits[:, r : r + h, c : c + w]


def to_result(
    core_logits: torch.Tensor,
    valid: np.ndarray,
    tile: Tile,
    class_values: Sequence[int],
    want_probabilities: bool,
    keep_logits: bool = False,
) -> TileResult:
    """Argmax to class values (nodata where the input had none) and optional uint8 probabilities."""
    dtype, nodata = class_raster_dtype(class_values)
    lookup = np.asarray(class_values, dtype=dtype)
    classes = lookup[core_logits.argmax(0).numpy()]
    classes[~valid] = nodata
    probs = None
    if want_probabilities:
        p = torch.softmax(core_logits, dim=0).numpy()
        probs = np.rint(p * 255.0).astype(np.uint8)
        probs[:, ~valid] = 0
    return TileResult(
        core=tile.core,
        classes=classes,
        probabilities=probs,
        logits=core_logits.numpy().copy() if keep_logits else None,
    )
