"""Where chips go: the label source, chip and split-block sizes, the chip windows, and which split
each block goes to."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.errors import ChipError, first_line
from geoseg.options import VECTOR_FORMATS
from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import read_env

#: Chip sizes ``chip`` chooses from, largest first, when --size is not given.
AUTO_SIZES = (256, 128, 64, 32)


#: Fewest whole chips the labelled area should hold at the chosen size.
AUTO_MIN_CHIPS = 24


#: Fewest split blocks the labelled area is cut into (so that validation gets a share).
AUTO_MIN_BLOCKS = 6


#: Widest strip of label pixels read at once when counting classes per split block.
STRIP_WIDTH = 8192


#: Label files read as vectors: what geoseg writes, and KML and GML.
VECTOR_SUFFIXES = {*VECTOR_FORMATS, ".kml", ".gml"}
#: Seeded draws of the block split compared by :func:`choose_split` (the first is the plain
#: shuffle, kept when no later draw covers the classes better).
SPLIT_DRAWS = 256


@dataclass(frozen=True)
class LabelSource:
    """Labels for one image: a raster (any grid, resampled by nearest) or a vector file."""

    path: str
    kind: str
    field: str | None = None
    value_map: tuple[tuple[str, int], ...] | None = None
    background: int | None = None
    nodata_is_class: bool = False


@dataclass(frozen=True)
class ChipWindow:
    """A chip's origin, its extent inside its split block and the scene (``height`` x ``width``,
    at most the chip size; the rest is padded) and its split."""

    row: int
    col: int
    split: str
    height: int = 0
    width: int = 0


def label_source(
    path: str,
    label_field: str | None,
    value_map: dict[str, int] | None,
    background: int | None = None,
    nodata_is_class: bool = False,
) -> LabelSource:
    """Classify and check a label path: raster, or vector with an existing field."""
    p = Path(path)
    if not p.exists() and not path.startswith("/vsi"):
        raise ChipError(f"labels not found: {path}; check the path")
    if p.suffix.lower() in VECTOR_SUFFIXES or p.is_dir():
        import pyogrio

        try:
            info = pyogrio.read_info(path)
        except Exception as exc:  # pyogrio raises its own DataSourceError family
            raise ChipError(f"cannot read vector labels {path}: {first_line(exc)}") from exc
        fields = [str(f) for f in info["fields"]]
        if label_field is None:
            raise ChipError(
                f"vector labels need --label-field; {p.name} has fields: {', '.join(fields)}"
            )
        if label_field not in fields:
            raise ChipError(
                f"label field {label_field!r} is not in {p.name}; its fields are: {', '.join(fields)}"
            )
        vm = tuple(sorted(value_map.items())) if value_map else None
        return LabelSource(path, "vector", label_field, vm, background)
    return LabelSource(path, "raster", nodata_is_class=nodata_is_class)


def auto_chip_size(height: int, width: int) -> int:
    """The largest of 256/128/64/32 px at which the labelled area holds ``AUTO_MIN_CHIPS`` whole
    chips (smaller scenes get smaller chips rather than none)."""
    for s in AUTO_SIZES:
        if (height // s) * (width // s) >= AUTO_MIN_CHIPS:
            return s
    return AUTO_SIZES[-1]


def auto_split_block(height: int, width: int, size: int) -> int:
    """The largest multiple of ``size`` up to 4x that cuts the area into ``AUTO_MIN_BLOCKS`` split
    blocks, so that every scene big enough for two chips has blocks for validation."""
    for k in (4, 3, 2):
        b = k * size
        if math.ceil(height / b) * math.ceil(width / b) >= AUTO_MIN_BLOCKS:
            return b
    return size


def _starts(begin: int, end: int, size: int, stride: int) -> list[int]:
    """Chip origins from ``begin`` to ``end``; the last chip may be partial (padded later), and
    one that adds no row or column beyond its predecessor is skipped."""
    out = [begin]
    for r in range(begin + stride, end, stride):
        if r + size - stride < end:
            out.append(r)
    return out


def plan_windows(
    height: int,
    width: int,
    size: int,
    stride: int,
    block: int,
    val_fraction: float,
    test_fraction: float,
    seed: int | str,
    block_classes: dict[tuple[int, int], np.ndarray] | None = None,
    stratify: bool = True,
) -> list[ChipWindow]:
    """Chip origins inside split blocks; whole blocks go to train, val or test (seeded).

    Chips never cross a block edge: the part beyond it is padded, so no chip of one split
    overlaps another split. With the labelled pixels per class of each block
    (``block_classes``) only labelled blocks are drawn for validation and testing, stratified
    by class unless ``stratify`` is false (:func:`choose_split`); without them, at random.
    """
    if block < size:
        raise ChipError(f"--split-block {block} is smaller than --size {size}; use at least {size}")
    blocks = [(r, c) for r in range(0, height, block) for c in range(0, width, block)]
    labelled = blocks if block_classes is None else [b for b in blocks if b in block_classes]
    n = len(labelled)
    n_val = int(round(val_fraction * n))
    n_test = int(round(test_fraction * n))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    if n_val + n_test >= n and n > 1:
        n_test = max(0, min(n_test, n - 1 - n_val))
    order = choose_split(blocks, block_classes, n_val, n_test, seed, stratify)
    split_of = {b: "val" for b in order[:n_val]}
    split_of.update({b: "test" for b in order[n_val : n_val + n_test]})
    out: list[ChipWindow] = []
    for br, bc in blocks:
        r_end = min(br + block, height)
        c_end = min(bc + block, width)
        for r in _starts(br, r_end, size, stride):
            for c in _starts(bc, c_end, size, stride):
                out.append(
                    ChipWindow(
                        r,
                        c,
                        split_of.get((br, bc), "train"),
                        min(size, r_end - r),
                        min(size, c_end - c),
                    )
                )
    return out


def choose_split(
    blocks: list[tuple[int, int]],
    block_classes: dict[tuple[int, int], np.ndarray] | None,
    n_val: int,
    n_test: int,
    seed: int | str,
    stratify: bool = True,
) -> list[tuple[int, int]]:
    """Blocks in split order, validation first, then test, then train; only labelled blocks
    (keys of ``block_classes``) come before the first unlabelled one.

    The first draw is a seeded shuffle (labelled blocks first), as chip drew before it
    stratified, so ``stratify=False`` reproduces an older split. Random blocks left validation
    without a scene's rare class (no building pixel in nrcan_tiles' or SpaceNet 7's), and
    training then kept the epoch best at the other classes; so of ``SPLIT_DRAWS`` seeded draws
    the one kept first leaves every class in training, then holds the most classes in
    validation and test, then has class shares closest to the whole scene's (mean absolute
    log ratio of pixels per class against the split's share of all pixels): scikit-learn's
    StratifiedGroupKFold idea, with blocks as the groups.
    """
    rnd = random.Random(seed)
    order = blocks[:]
    rnd.shuffle(order)
    if block_classes is None:
        return order
    order.sort(key=lambda b: b not in block_classes)  # stable: labelled blocks first, shuffled
    candidates = [b for b in order if b in block_classes]
    if not stratify or not candidates or n_val + n_test == 0:
        return order
    k = max(len(block_classes[b]) for b in candidates)
    counts = np.zeros((len(candidates), k), np.float64)
    for i, b in enumerate(candidates):
        counts[i, : len(block_classes[b])] = block_classes[b]
    counts = counts[:, counts.sum(axis=0) > 0]
    total = counts.sum(axis=0)
    rows = np.arange(len(candidates))
    best: tuple[float, ...] | None = None
    best_rows = rows
    for d in range(SPLIT_DRAWS):
        if d:
            rows = np.array(rnd.sample(range(len(candidates)), len(candidates)))
        val = counts[rows[:n_val]].sum(axis=0)
        test = counts[rows[n_val : n_val + n_test]].sum(axis=0)
        train = total - val - test
        score = (
            float((train > 0).sum()),
            float((val > 0).sum() + (test > 0).sum()),
            -(_share_error(val, total) + _share_error(test, total)),
        )
        if best is None or score > best:
            best, best_rows = score, rows
    chosen = [candidates[i] for i in best_rows]
    return chosen + [b for b in order if b not in block_classes]


def _share_error(part: np.ndarray, total: np.ndarray) -> float:
    """Mean absolute log ratio of ``part``'s pixels per class to its share of all pixels (0: the
    same class mix as ``total``; an empty part counts 0)."""
    if part.sum() == 0:
        return 0.0
    expected = total * (part.sum() / total.sum())
    return float(np.mean(np.abs(np.log((part + 1.0) / (expected + 1.0)))))


def _block_classes(
    label: LabelSource, info: Any, block: int, ignore: int
) -> dict[tuple[int, int], np.ndarray] | None:
    """Labelled pixels per class value (index 0..255) of each labelled split block, from a full read of a label
    raster on the image's grid, a strip of blocks at a time; None when that cannot be known
    cheaply (vector labels, another grid)."""
    if label.kind != "raster":
        return None
    out: dict[tuple[int, int], np.ndarray] = {}
    strip = max(block, STRIP_WIDTH // block * block)
    with read_env(label.path, READ_CACHE_BYTES), rasterio.open(label.path) as src:
        if src.shape != (info.height, info.width) or src.transform != info.transform:
            return None
        for r in range(0, info.height, block):
            for c0 in range(0, info.width, strip):
                window = Window(c0, r, min(strip, info.width - c0), min(block, info.height - r))
                arr = src.read(1, window=window)
                labelled = arr != ignore
                if src.nodata is not None and not label.nodata_is_class:
                    labelled &= arr != src.nodata
                if np.issubdtype(arr.dtype, np.floating):
                    labelled &= np.isfinite(arr)
                for c in range(0, int(window.width), block):
                    part = arr[:, c : c + block][labelled[:, c : c + block]]
                    if part.size:
                        values = part.astype(np.int64).clip(0, 255)
                        out[(r, c0 + c)] = np.bincount(values)
    return out
