"""One COG assembled on the client from the compressed tiles the workers made.

The client decodes and encodes nothing of the full-resolution raster or the overview levels
the cells completed (:class:`geoseg.prediction.cell_task.CellTask`): it appends each tile's bytes
to a hidden spool file as cells arrive, and at the end writes the COG's header and IFDs and
copies the tiles into COG order (:func:`geoseg.raster.tiff.write_cog`). Only the coarsest overview
levels, which need pixels from several cells, are reduced and compressed here, from the small
pixels each cell hands back (a 64th to a 256th of the scene's pixels, on disk, not in memory).

Like :class:`geoseg.raster.sink.RasterSink` it has ``path``, ``prepare`` and ``abort``, so
:func:`geoseg.raster.sink.open_sinks` publishes it all or nothing with the other outputs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geoseg.fs import remove_quietly, temporary_sibling
from geoseg.raster.blocks import BLOCK, RasterMeta, encode_tiles, overview_count, reduce2
from geoseg.raster.tiff import write_cog

#: Rows of the coarse levels reduced and compressed at a time (even, a multiple of the block).
BAND_ROWS = 2 * BLOCK


class CogAssembler:
    """A COG of ``width`` x ``height`` put together from cells of ``cell_size`` pixels whose
    first ``local_levels`` overview levels were compressed on the workers.

    ``spool``: the folder of the hidden temporary files (beside the output, so the final rename
    stays on one file system; a local folder for an object-store output).
    """

    def __init__(
        self,
        path: Path,
        meta: RasterMeta,
        width: int,
        height: int,
        crs: Any,
        transform: Any,
        local_levels: int,
        spool: Path | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.spec = meta.spec
        self.width, self.height = width, height
        self.crs, self.transform = crs, transform
        self.levels = overview_count(width, height)
        self.local = min(local_levels, self.levels)
        self.spool = spool or path.parent
        self.cog_tmp: Path | None = None
        self._sizes = [
            np.zeros(self._blocks(i)[0] * self._blocks(i)[1], np.int64)
            for i in range(self.levels + 1)
        ]
        self._offsets = [np.zeros_like(s) for s in self._sizes]
        self._tiles_path = temporary_sibling(self.spool / path.name, ".tiles")
        self._tiles = open(self._tiles_path, "r+b")
        self._end = 0
        self._raw_path: Path | None = None
        self._raw: np.ndarray | None = None
        if self.levels > self.local:
            h, w = self._level_shape(self.local + 1)
            self._raw_path = temporary_sibling(self.spool / path.name, ".raw.npy")
            self._raw = np.lib.format.open_memmap(
                self._raw_path, "w+", self.spec.dtype, (self.spec.count, h, w)
            )

    def _level_shape(self, level: int) -> tuple[int, int]:
        return -(-self.height // 2**level), -(-self.width // 2**level)

    def _blocks(self, level: int) -> tuple[int, int]:
        h, w = self._level_shape(level)
        return -(-h // BLOCK), -(-w // BLOCK)

    def _put(self, level: int, index: int, data: bytes) -> None:
        self._tiles.write(data)
        self._offsets[level][index] = self._end
        self._sizes[level][index] = len(data)
        self._end += len(data)

    def add(self, window: Window, blocks: list[list[bytes]], raw: np.ndarray | None) -> None:
        """Place one cell's compressed tiles (level by level, row-major over the cell's blocks)
        and the pixels of its next level (when the COG has more levels than the cells made)."""
        r0, c0 = int(window.row_off), int(window.col_off)
        for level, tiles in enumerate(blocks[: self.local + 1]):
            f = 2**level
            br, bc = r0 // f // BLOCK, c0 // f // BLOCK
            cell_cols = -(-(-(-int(window.width) // f)) // BLOCK)
            cols = self._blocks(level)[1]
            for j, data in enumerate(tiles):
                self._put(level, (br + j // cell_cols) * cols + bc + j % cell_cols, data)
        if self._raw is not None and raw is not None:
            f = 2 ** (self.local + 1)
            self._raw[:, r0 // f : r0 // f + raw.shape[1], c0 // f : c0 // f + raw.shape[2]] = raw

    def prepare(self) -> Path:
        """Make the coarse levels, then write the COG to a hidden file beside the output; returns
        it (nothing at the final path changes yet)."""
        if self._raw is not None:
            self._coarse_levels()
        self._tiles.flush()
        self.cog_tmp = temporary_sibling(self.spool / self.path.name)
        tags = self.meta.tiff_tags(self.width, self.height, self.crs, self.transform)
        fd = self._tiles.fileno()
        offsets, sizes = self._offsets, self._sizes

        def tile(level: int, index: int) -> bytes:
            return os.pread(fd, int(sizes[level][index]), int(offsets[level][index]))

        with open(self.cog_tmp, "wb") as out:
            write_cog(out, tags, [s.tolist() for s in sizes], tile)
        self._close_spool()
        return self.cog_tmp

    def _coarse_levels(self) -> None:
        """Levels past the cells' own: compressed from the spooled pixels, band by band, each
        band reduced into the next level's pixels."""
        assert self._raw is not None
        level, source = self.local + 1, self._raw
        while True:
            h, w = source.shape[1:]
            cols = self._blocks(level)[1]
            nxt: list[np.ndarray] = []
            for top in range(0, h, BAND_ROWS):
                band = np.asarray(source[:, top : top + BAND_ROWS])
                for j, data in enumerate(encode_tiles(band, self.spec)):
                    self._put(level, (top // BLOCK) * cols + j, data)
                if level < self.levels:
                    nxt.append(reduce2(band, self.spec.reduction, self.spec.nodata))
            if level >= self.levels:
                break
            source = np.concatenate(nxt, axis=1)  # a quarter of the level before: small by now
            level += 1

    def _close_spool(self) -> None:
        with contextlib.suppress(Exception):
            self._tiles.close()
        self._raw = None
        remove_quietly(self._tiles_path, self._raw_path)

    def abort(self) -> None:
        """Drop everything written so far."""
        self._close_spool()
        remove_quietly(self.cog_tmp)
