"""Make glibc give freed memory back: one malloc arena for the ``geoseg`` program, and a trim of
the heap when a worker's freed arrays pile up (nothing happens where the C library is not
glibc); and how much memory the machine has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
#: Free bytes in the heap above which :func:`trim_heap` gives them back.
TRIM_FREE_BYTES = 16 * 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def physical_memory() -> int:
    """Bytes of RAM (0 where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """glibc, or None (another C library, or no ``mallinfo2``: glibc before 2.33)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc's, or AttributeError
    except (OSError, AttributeError):
        return None
    return libc


def one_malloc_arena() -> None:
    """One malloc arena for this process. By default every thread gets its own (up to 8 per
    core) and each keeps what its thread freed: the reader thread's tiles, the engine's batches,
    the writer's blocks. One arena: 95 MB less peak memory predicting 4,096², no slower
    (docs/benchmarks.md). For a program that owns its process (the ``geoseg`` command)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, 1)


def trim_heap(min_free: int | None = None) -> bool:
    """Give the heap's free pages back to the system when more than ``min_free`` bytes of it are
    free (default :data:`TRIM_FREE_BYTES`; arrays of finished tasks that glibc keeps for reuse,
    in holes it cannot shrink); returns whether it trimmed. Cheap when there is nothing to do
    (one ``mallinfo2`` call)."""
    libc = _libc()
    if libc is None or libc.mallinfo2().fordblks <= (TRIM_FREE_BYTES if min_free is None else min_free):
        return False
    libc.malloc_trim(0)
    return True
