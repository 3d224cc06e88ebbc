"""GDAL's block cache for this process: how big, and why it only grows.

Predict says what its read order needs per scene (:func:`geoseg.prediction.plan.block_cache_need`);
when the tasks of several scenes interleave in one process (a batch with scenes in flight),
each of those scenes needs its own share, or every scene's blocks push the others' out.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

from geoseg.memory import physical_memory

#: The block cache every geoseg process gets at least (bytes); predict grows it to what its read
#: order needs. A fixed bound filled up with blocks no task would read again.
BLOCK_CACHE_MIN = 16 * 2**20
#: What reads that do not size the cache themselves ask for (polygonizing, cutting chips): the
#: bound every read had before predict sized its own.
READ_CACHE_BYTES = 64 * 2**20
#: The most it grows to: GDAL's own default (5 % of RAM), and at least 64 MB.
BLOCK_CACHE_MAX = max(64 * 2**20, physical_memory() // 20)
#: Scenes whose last read is remembered (least recently read forgotten first).
REMEMBERED_SCENES = 64


def _set_gdal_cache(size: int) -> None:
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", size)


class BlockCacheBound:
    """The bound of one process's block cache, grown (never shrunk) to what the reads ask.

    Not with ``rasterio.Env(GDAL_CACHEMAX=...)``: that sets the process's cache size on entry and
    restores it on exit, so Envs entered in reader and writer threads flipped it, and shrinking
    it flushed dirty blocks of a raster another thread was writing: a probability band of one
    tile was lost, once in ten runs of the batch tests. Hence grow only.

    A read of scene S asks for S's need plus the needs of the other scenes read since S's
    previous read: those are the scenes whose blocks shared the cache with S's in between.
    Scenes read one after another add nothing; two scenes whose tasks alternate get both
    shares (with only the larger one, each file was read 3.2 times instead of 1.26)."""

    def __init__(
        self,
        set_size: Callable[[int], None] = _set_gdal_cache,
        minimum: int = BLOCK_CACHE_MIN,
        maximum: int = BLOCK_CACHE_MAX,
    ) -> None:
        self.set_size, self.minimum, self.maximum = set_size, minimum, maximum
        self.size = 0
        self._reads: OrderedDict[str, tuple[int, int]] = (
            OrderedDict()
        )  # scene -> (need, read number)
        self._count = 0
        self._lock = threading.Lock()

    def grow(self, need: int | None = None, scene: str | None = None) -> int:
        """Grow the cache to ``need`` bytes (plus the shares of scenes read since ``scene``'s
        previous read), within the minimum and maximum; returns the bound now."""
        own = int(need or 0)
        with self._lock:
            want = own
            if scene is not None and own:
                self._count += 1
                previous = self._reads.pop(scene, None)
                if previous is not None:
                    want += sum(n for n, at in self._reads.values() if at > previous[1])
                self._reads[scene] = (own, self._count)
                while len(self._reads) > REMEMBERED_SCENES:
                    self._reads.popitem(last=False)
            want = min(max(self.minimum, want), self.maximum)
            if want > self.size:
                self.set_size(want)
                self.size = want
            return self.size


_BOUND: dict[int, BlockCacheBound] = {}
_BOUND_LOCK = threading.Lock()


def bound_block_cache(need: int | None = None, scene: str | None = None) -> None:
    """Grow this process's GDAL block cache to ``need`` bytes for reading (or writing the
    outputs of) ``scene`` (see :class:`BlockCacheBound`); at least :data:`BLOCK_CACHE_MIN`."""
    with _BOUND_LOCK:
        bound = _BOUND.get(os.getpid())
        if bound is None:  # first use here, or a forked child: its own bound
            _BOUND.clear()
            bound = _BOUND[os.getpid()] = BlockCacheBound()
    bound.grow(need, scene)
