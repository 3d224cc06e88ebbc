"""The worker gives freed heap memory back to the system (glibc), so a long run stays flat."""

from __future__ import annotations

import os

import numpy as np
import pytest

from geoseg.memory import _libc, trim_heap


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(
    _libc() is None or not os.path.exists("/proc/self/statm"), reason="glibc on Linux only"
)
def test_trim_heap_gives_freed_holes_back() -> None:
    # 60 MB of 100 kB arrays (below glibc's mmap threshold: they live in the heap), every other
    # one freed: 30 MB of holes the heap cannot shrink away, because live arrays sit above them
    arrays = [np.ones(100_000 // 8) for _ in range(600)]
    del arrays[::2]
    assert not trim_heap(min_free=2**40)  # not that much free: nothing done
    before = rss_bytes()
    assert trim_heap(min_free=1 << 20)
    assert before - rss_bytes() > 15 * 2**20
    assert sum(float(a[0]) for a in arrays) == 300  # the live arrays are untouched
