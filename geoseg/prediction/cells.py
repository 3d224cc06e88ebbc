"""Cells: the square pieces of a scene that one worker task predicts, stitches, compresses and
(with ``--cells``) writes and publishes itself.

Each cell has its own overlap-tile grid (:class:`geoseg.tiling.TileGrid`, offset to the cell),
whose cores partition the cell; tiles still read their margins from the real neighbouring
pixels, so the output stays exactly one pass of the network over the whole mirror-padded scene,
whatever the cells. Inside a single COG, cells are multiples of ``2**k`` blocks, so a cell's
tiles and its first ``k`` overview levels are complete on the worker that computed it
(:mod:`geoseg.raster.blocks`); the client only places bytes (:mod:`geoseg.raster.cog_writer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from rasterio.windows import Window

from geoseg.errors import OptionError
from geoseg.raster.blocks import BLOCK
from geoseg.tiling import Tile, TileGrid

#: Bytes per pixel of a cell's stitched outputs kept below this on a worker (two tasks at once).
CELL_BYTES = 64 * 2**20
#: Smallest cell a single COG is assembled from (blocks x 2**k).
MIN_CELL = 2 * BLOCK


@dataclass(frozen=True)
class Cell:
    """One cell: its place in the cell grid and its window of the scene."""

    row: int
    col: int
    window: Window
    grid: TileGrid

    @property
    def name(self) -> str:
        """File stem of a cell in a ``--cells`` folder: ``R000C001``."""
        return f"R{self.row:03d}C{self.col:03d}"

    @property
    def tiles(self) -> list[Tile]:
        return list(self.grid)


@dataclass(frozen=True)
class CellLayout:
    """A scene cut into ``size`` x ``size`` cells, each with its own tile grid."""

    height: int
    width: int
    size: int
    tile: int
    margin: int
    stride: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.size)

    def __len__(self) -> int:
        return self.rows * self.cols

    def cell(self, row: int, col: int) -> Cell:
        r0, c0 = row * self.size, col * self.size
        h, w = min(self.size, self.height - r0), min(self.size, self.width - c0)
        grid = TileGrid.create(h, w, self.tile, self.margin, self.stride, r0, c0)
        return Cell(row, col, Window(c0, r0, w, h), grid)

    def __iter__(self) -> Iterator[Cell]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield self.cell(r, c)

    @property
    def tiles(self) -> int:
        return sum(len(c.grid) for c in self)

    @property
    def overlap_factor(self) -> float:
        """Network input pixels per scene pixel kept, over every cell's tiles."""
        computed = sum(len(c.grid) * c.grid.tile_height * c.grid.tile_width for c in self)
        return computed / (self.height * self.width)

    @property
    def local_levels(self) -> int:
        """Overview levels a cell completes on its own: its size is ``BLOCK * 2**k`` times an integer."""
        k = 0
        while self.size % (BLOCK * 2 ** (k + 1)) == 0:
            k += 1
        return k


def internal_cell_size(
    height: int, width: int, tile: int, margin: int, stride: int, bytes_per_pixel: int, threads: int
) -> int:
    """Cell size for a single COG: ``BLOCK * 2**k`` (a multiple of ``stride``) whose stitched
    outputs stay within :data:`CELL_BYTES` on a worker. Cells re-balance their tiles, so a cell of
    a few large tiles costs more overlap: the choice is the largest cell within 3 % of the least
    network work, unless cells enough for two per worker thread cost at most 10 % more work (the
    cluster then shares them; one large-tile cell keeps every core busy on its own)."""
    sizes = sorted({math.lcm(BLOCK * 2**k, stride) for k in range(1, 6)})
    sizes = [s for s in sizes if s >= MIN_CELL and s * s * bytes_per_pixel <= CELL_BYTES] or sizes[
        :1
    ]
    scored: list[tuple[int, float, int]] = []
    for size in sizes:
        layout = CellLayout(height, width, size, tile, margin, stride)
        scored.append((len(layout), layout.overlap_factor, size))
        if size >= max(height, width):
            break  # larger cells would be the same single cell
    least = min(f for _, f, _ in scored)
    parallel = [size for n, f, size in scored if n >= 2 * threads and f <= least * 1.10]
    if parallel:
        return max(parallel)
    return max(size for _, f, size in scored if f <= least * 1.03)


def check_cell_size(cells: int, tile: int, alignment: int) -> None:
    """``--cells N``: at least one tile and on the model's stride lattice (else tiles of two
    cells would not line up with one pass over the scene)."""
    if cells < tile:
        raise OptionError(
            f"--cells {cells} is smaller than a tile ({tile} px); use --cells "
            f"{max(-(-tile // alignment) * alignment, 2048)} or more"
        )
    if cells % alignment:
        raise OptionError(
            f"--cells {cells} is not a multiple of the model's output stride {alignment}; "
            f"use --cells {-(-cells // alignment) * alignment}"
        )
