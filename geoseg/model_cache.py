"""The per-user model cache: model files workers receive, ONNX conversions of ``.pt`` models and
fused graphs, each named by the model's content hash (one folder per user, mode 0700).

Entries are used through :func:`cache_hit`, which marks them used, and added through
:func:`cache_added`, which then removes the least recently used entries beyond
:data:`MODEL_CACHE_BYTES`. A long-running worker that sees many models keeps a bounded folder;
what it used in the last hour is never removed (another worker may be about to open it).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from pathlib import Path

from geoseg.errors import CheckpointError

#: Bytes the cache keeps at most: the built-in model's entries take 4 MB, a DeepLab on ResNet-50
#: about 300 MB (its ``.pt`` file, conversion and fused graph).
MODEL_CACHE_BYTES = 2 * 2**30
#: Entries used this recently stay whatever the size (seconds).
KEEP_RECENT_S = 3600
#: Temporary files a killed process left behind go after this long (seconds).
STALE_PART_S = 86400


def model_cache_dir() -> Path:
    """Where a worker keeps model files it received, named by content hash: one folder per user,
    readable by that user only (0700), so no other user can swap a file in it or be blocked by it."""
    folder = Path(tempfile.gettempdir()) / f"geoseg-models-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise CheckpointError(
            f"the model cache {folder} is not a folder of this user; remove it (another user or a "
            "symlink is in the way) and run again"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def cache_hit(path: Path) -> bool:
    """Whether the cache entry ``path`` exists; if so it is marked used now (its modification
    time), so :func:`prune_model_cache` removes it last."""
    try:
        os.utime(path)
    except OSError:
        return False
    return path.is_file()


def cache_added(path: Path) -> Path:
    """Note a new entry written at ``path`` and bound the cache (:func:`prune_model_cache`);
    returns ``path``."""
    prune_model_cache(keep=path)
    return path


def prune_model_cache(keep: Path | None = None, budget: int | None = None) -> list[Path]:
    """Remove the cache's least recently used entries until it holds at most ``budget`` bytes
    (default :data:`MODEL_CACHE_BYTES`), and temporary files older than a day; ``keep`` and
    entries used in the last hour stay. Returns what was removed."""
    budget = MODEL_CACHE_BYTES if budget is None else budget
    now = time.time()
    entries: list[tuple[float, int, Path]] = []
    removed: list[Path] = []
    for p in model_cache_dir().iterdir():
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if p.name.startswith("."):  # a temporary file being written, or left by a killed process
            if now - st.st_mtime > STALE_PART_S:
                removed.append(p)
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for mtime, size, p in sorted(entries):  # least recently used first
        if total <= budget:
            break
        if now - mtime < KEEP_RECENT_S or (keep is not None and p == keep):
            continue
        removed.append(p)
        total -= size
    for p in removed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return removed
