"""From an engine's whole-tile output to what is written: the kept core of each tile."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geoseg.engines import EngineOutput
from geoseg.tiling import Tile


@dataclass
class TileResult:
    """The kept core of one tile: class values, and optionally uint8 probabilities and logits."""

    core: Window
    classes: np.ndarray
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    error: str | None = None


def core_result(out: EngineOutput, index: int, tile: Tile) -> TileResult:
    """Tile ``index`` of a batch output, cropped to its core (margins were context only); copies,
    so the batch's arrays are freed."""
    r, c = tile.core_offset
    h, w = int(tile.core.height), int(tile.core.width)

    def crop(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a[index, ..., r : r + h, c : c + w])

    classes = crop(out.classes)
    assert classes is not None
    return TileResult(tile.core, classes, crop(out.probabilities), crop(out.logits))
