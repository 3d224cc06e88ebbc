"""The reader thread of a process: scenes kept open between tiles (least recently used closed
first, reopened when the file changes), and :class:`TileReader`, which reads the next tile's
mirrored input while the network runs."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import rasterio

from geoseg.raster.block_cache import bound_block_cache
from geoseg.raster.read import no_georef_warning, read_env, read_mirrored
from geoseg.raster.scenes import file_token
from geoseg.tiling import Tile


class TileReader:
    """Reads batches of tiles (mirrored at scene edges) for one task in this process's reader
    thread, so the next batch's pixels are read and decoded while the engine runs.

    The reader thread is shared by every task of the process (one per worker) and keeps the last
    few scenes open (:data:`OPEN_SCENES`): a task's reads queue behind those of the task running
    before it, so with two threads per worker one task reads while the other computes, and
    GDAL's block cache still holds the blocks a neighbouring row of tiles also covers (a new
    dataset per task decoded every block twice). A scene is reopened when its file changed.
    """

    def __init__(self, scene: str, bands: Sequence[int], cache_bytes: int | None = None) -> None:
        self.scene, self.bands, self.cache_bytes = scene, list(bands), cache_bytes

    def __enter__(self) -> "TileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def prefetch(self, tiles: Sequence[Tile]) -> Any:
        """A future of ``(data, valid)``: N x C x H x W raw pixels and N x H x W validity."""
        return _reader_pool().submit(self._read, tuple(tiles))

    def _read(self, tiles: tuple[Tile, ...]) -> tuple[np.ndarray, np.ndarray]:
        # each tile straight into its place in the batch (its blocks come from GDAL's cache when
        # a neighbour decoded them): no window of the whole row of tiles, no stacked copy of it
        height, width = tiles[0].input_height, tiles[0].input_width
        bound_block_cache(self.cache_bytes, self.scene)  # this scene's share among scenes in flight
        with read_env(self.scene):
            src = _open_scene(self.scene)
            data = np.empty((len(tiles), len(self.bands), height, width), src.dtypes[0])
            valid = np.empty((len(tiles), height, width), bool)
            for i, t in enumerate(tiles):
                read_mirrored(
                    src,
                    self.bands,
                    t.input_row,
                    t.input_col,
                    height,
                    width,
                    out=(data[i], valid[i]),
                )
        return data, valid


#: Scenes the reader thread keeps open (least recently used closed first).
OPEN_SCENES = 4


_OPEN: "OrderedDict[tuple[str, Any], Any]" = OrderedDict()


_POOL: Any = None


_POOL_PID = -1


_POOL_LOCK = threading.Lock()


def _reader_pool() -> Any:
    """This process's reader thread (created on first use; in a forked child, anew)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            _POOL, _POOL_PID = ThreadPoolExecutor(1, thread_name_prefix="geoseg-read"), os.getpid()
            _OPEN.clear()
        return _POOL


def _open_scene(scene: str) -> Any:
    """The open dataset of ``scene`` as its file is now; runs in the reader thread only."""
    key = (scene, repr(file_token(scene)))
    src = _OPEN.get(key)
    if src is not None:
        _OPEN.move_to_end(key)
        return src
    for old in [k for k in _OPEN if k[0] == scene]:  # the file changed: its old handle is stale
        _OPEN.pop(old).close()
    if scene.startswith("geoseg-mosaic:"):  # a map's cell: its scenes on the output grid
        from geoseg.raster.mosaic import open_mosaic

        src = open_mosaic(scene)
    else:
        with no_georef_warning():
            src = rasterio.open(scene)
    _OPEN[key] = src
    while len(_OPEN) > OPEN_SCENES:
        _OPEN.popitem(last=False)[1].close()
    return src


def close_scenes() -> None:
    """Close the scenes the reader thread keeps open (a worker between jobs, tests)."""
    if _POOL is not None and _POOL_PID == os.getpid():
        _POOL.submit(_close_all).result()


def _close_all() -> None:
    while _OPEN:
        _OPEN.popitem()[1].close()
