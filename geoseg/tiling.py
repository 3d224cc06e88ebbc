"""Pure tile geometry: overlap-tile grids aligned to a network's output stride, mirror indices.

No torch and no dask here: a tile is described by integers, and reading it is ``io``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from rasterio.windows import Window

from geoseg.errors import TilingError


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer coordinates onto ``[0, n)`` by mirroring at the edges (edge not repeated).

    This is numpy's ``reflect`` padding extended periodically, so it also works for pads wider
    than the scene itself (scenes smaller than one margin).
    """
    index = np.asarray(index, dtype=np.int64)
    if n <= 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.mod(index, period)
    return np.where(folded < n, folded, period - folded)


def auto_margin(receptive_field_radius: int, stride: int) -> int:
    """The margin that makes tiling exact: the receptive-field radius rounded up to the stride."""
    return round_up(max(int(receptive_field_radius), 0), stride)


def validate_tiling(tile: int, margin: int, stride: int) -> None:
    """Raise :class:`TilingError` with the nearest valid value when the numbers do not fit."""
    if stride < 1:
        raise TilingError(f"output stride must be >= 1, got {stride}")
    if margin < 0:
        raise TilingError(f"--margin must be >= 0, got {margin}")
    if margin % stride:
        raise TilingError(
            f"--margin {margin} is not a multiple of the model's output stride {stride}; "
            f"use --margin {round_up(margin, stride)}"
        )
    if tile % stride:
        lower = max(tile // stride * stride, stride)
        upper = round_up(tile, stride)
        nearest = lower if (tile - lower) <= (upper - tile) and lower > 2 * margin else upper
        raise TilingError(
            f"--tile {tile} is not a multiple of the model's output stride {stride}; "
            f"use --tile {max(nearest, 2 * margin + stride)}"
        )
    if tile <= 2 * margin:
        raise TilingError(
            f"--tile {tile} leaves no core inside a margin of {margin} on each side; "
            f"use --tile {2 * margin + stride} or more (for example {round_up(4 * margin, stride)})"
        )


def _balanced_core(size: int, max_core: int, stride: int) -> int:
    """The smallest stride-aligned core that covers ``size`` in as few tiles as ``max_core`` does,
    so the last tile of a row is not mostly mirrored padding."""
    n = -(-size // max_core)
    return min(max_core, round_up(-(-size // n), stride))


@dataclass(frozen=True)
class Tile:
    """One network input: ``input_*`` may reach past the scene (mirrored); ``core`` is what is kept."""

    index: int
    grid_row: int
    grid_col: int
    input_row: int
    input_col: int
    input_height: int
    input_width: int
    core: Window

    @property
    def core_offset(self) -> tuple[int, int]:
        """Row/column of the core's first pixel inside the network input."""
        return int(self.core.row_off) - self.input_row, int(self.core.col_off) - self.input_col


@dataclass(frozen=True)
class TileGrid:
    """Overlap-tile grid over a ``height`` x ``width`` scene.

    Cores tile the scene without overlap; each input adds ``margin`` pixels of context on every
    side. Every input origin sits on the stride lattice shifted by ``-margin``, so pooling grids
    line up between tiles and with a single whole-scene pass.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    margin: int
    stride: int
    #: Where the grid's area starts in the scene (a cell of a larger scene; stride-aligned).
    row_off: int = 0
    col_off: int = 0

    @classmethod
    def create(
        cls,
        height: int,
        width: int,
        tile: int,
        margin: int,
        stride: int,
        row_off: int = 0,
        col_off: int = 0,
    ) -> "TileGrid":
        """Validate and build a grid over ``height`` x ``width`` pixels from (``row_off``,
        ``col_off``). Cores are balanced (and stay stride-aligned): the area is covered by as few
        tiles as ``tile`` allows, each no larger than needed."""
        if height < 1 or width < 1:
            raise TilingError(f"scene of {height}x{width} pixels has nothing to tile")
        validate_tiling(tile, margin, stride)
        if row_off % stride or col_off % stride:
            raise TilingError(
                f"a grid must start on the stride lattice ({stride}), not at {row_off}, {col_off}"
            )
        core = tile - 2 * margin
        return cls(
            height,
            width,
            _balanced_core(height, core, stride) + 2 * margin,
            _balanced_core(width, core, stride) + 2 * margin,
            margin,
            stride,
            row_off,
            col_off,
        )

    @property
    def core_height(self) -> int:
        return self.tile_height - 2 * self.margin

    @property
    def core_width(self) -> int:
        return self.tile_width - 2 * self.margin

    @property
    def rows(self) -> int:
        return -(-self.height // self.core_height)

    @property
    def cols(self) -> int:
        return -(-self.width // self.core_width)

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def overlap_factor(self) -> float:
        """Pixels the network computes per scene pixel kept: (tile / core) squared, for full tiles."""
        return (self.tile_height * self.tile_width) / (self.core_height * self.core_width)

    def tile(self, grid_row: int, grid_col: int) -> Tile:
        """The tile at one grid position."""
        r0 = self.row_off + grid_row * self.core_height
        c0 = self.col_off + grid_col * self.core_width
        core = Window(
            c0,
            r0,
            min(self.core_width, self.col_off + self.width - c0),
            min(self.core_height, self.row_off + self.height - r0),
        )
        return Tile(
            index=grid_row * self.cols + grid_col,
            grid_row=grid_row,
            grid_col=grid_col,
            input_row=r0 - self.margin,
            input_col=c0 - self.margin,
            input_height=self.tile_height,
            input_width=self.tile_width,
            core=core,
        )

    def __iter__(self) -> Iterator[Tile]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield self.tile(r, c)

    def groups(self, per_group: int, column_bands: bool = True) -> list[list[Tile]]:
        """The grid's tiles as tasks of at most ``per_group`` consecutive tiles of one row, in
        column bands: the grid's columns split into equal bands ``per_group`` tiles wide at most,
        each band's tasks top to bottom, then the next band (``column_bands`` false: row by row).

        A group inside one row is a single compact window to read. Going down a band rather than
        along whole rows keeps the scene blocks that consecutive tasks share (a row of tiles'
        bottom margin is the next row's top margin) to a band's width, whatever the scene's
        width, so a small block cache holds them (:func:`geoseg.prediction.plan.block_cache_need`).
        """
        per_group = max(1, per_group)
        bands = -(-self.cols // per_group)
        edges = [round(i * self.cols / bands) for i in range(bands + 1)]
        spans = list(zip(edges, edges[1:]))
        if column_bands:
            return [
                [self.tile(r, c) for c in range(c0, c1)]
                for c0, c1 in spans
                for r in range(self.rows)
            ]
        return [
            [self.tile(r, c) for c in range(c0, c1)] for r in range(self.rows) for c0, c1 in spans
        ]


def source_indices(start: int, length: int, n: int) -> np.ndarray:
    """Scene indices (mirrored at the edges) for ``length`` positions starting at ``start``."""
    return reflect_index(np.arange(start, start + length), n)


def scale_fractions(scales: "tuple[float, ...] | list[float]") -> list[tuple[int, int]]:
    """Each input scale as a fraction ``p/q`` with a small denominator (at most 8)."""
    from fractions import Fraction

    out = []
    for s in scales:
        if not 0.1 <= float(s) <= 4:
            raise TilingError(
                f"scale {s} is out of range; use scales between 0.1 and 4, e.g. 0.75,1,1.25"
            )
        f = Fraction(float(s)).limit_denominator(8)
        out.append((f.numerator, f.denominator))
    return out


def scales_alignment(stride: int, scales: "tuple[float, ...] | list[float]") -> int:
    """The tile alignment that keeps multi-scale inference seamless.

    A tile origin ``o`` maps to ``o * p / q`` at scale ``p/q``; that must land on the network's
    stride lattice, so origins (and tile sizes) must be multiples of ``stride * q``.
    """
    from math import lcm

    return stride * lcm(*(q for _, q in scale_fractions(scales))) if scales else stride


def context_radius(
    receptive_field: int, scales: "tuple[float, ...] | list[float]" = (), extra: int = 0
) -> int:
    """Input pixels one output pixel depends on, with rescaled inputs (the receptive field grows
    by 1/scale, plus the bilinear resampling taps both ways) and ``extra`` post-processing reach."""
    radius = int(receptive_field)
    for p, q in scale_fractions(scales):
        if (p, q) != (1, 1):
            radius = max(radius, -(-(int(receptive_field) + 2) * q // p) + 2)
    return radius + int(extra)
