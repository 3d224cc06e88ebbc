"""Make glibc give freed memory back: one malloc arena for the ``geoseg`` program, and a trim of
the heap when a worker's freed arrays pile up (nothing happens where the C library is not
glibc); how much memory the machine has; and the garbage collector kept off the objects that
live as long as the process while a short run works.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
#: Free bytes in the heap above which :func:`trim_heap` gives them back.
TRIM_FREE_BYTES = 16 * 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def physical_memory() -> int:
    """Bytes of RAM (0 where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


#: cgroup v2 and v1 files holding this process's memory limit (a container's).
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit() -> int:
    """Bytes this process may use: the machine's RAM, or less where a cgroup (a container, a
    batch scheduler's job) limits it (0 where neither is known)."""
    limit = physical_memory()
    for name in _CGROUP_LIMITS:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (limit or 1 << 62):
            limit = int(text)
    return limit


_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: str | int) -> int:
    """Bytes from a size such as ``2GB``, ``1500MB``, ``1.5GiB`` or a plain number of bytes;
    raises ``ValueError`` saying what is accepted."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        unit = match.group(2).upper() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(f"{value!r} is not a size; give e.g. 2GB, 1500MB or 1.5GiB")
        n = float(match.group(1)) * _UNITS[unit]
    if n < 1:
        raise ValueError(f"a size must be at least 1 byte, got {value!r}")
    return int(n)


def format_size(n: float) -> str:
    """``n`` bytes for people: ``2.9 GB``, ``420 MB`` (decimal units, as :func:`parse_size` reads them)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


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
    if libc is None or libc.mallinfo2().fordblks <= (
        TRIM_FREE_BYTES if min_free is None else min_free
    ):
        return False
    libc.malloc_trim(0)
    return True


def imports_frozen(func: F) -> F:
    """``func`` with the objects alive when it is called (most of them the imports', which live
    as long as the process) out of the garbage collector's full passes while it runs
    (:func:`gc.freeze`, undone after): a full pass over them holds the GIL, and so every block
    task's thread, for about 60 ms in a fresh ``geoseg stats`` process (90,000 objects), a
    sixth of counting a 16,384² raster."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        gc.freeze()
        try:
            return func(*args, **kwargs)
        finally:
            gc.unfreeze()

    return run  # type: ignore[return-value]
