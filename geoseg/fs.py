"""File-system safety: output-path checks, the one folder lock, the umask of published files,
and atomic writes (a hidden temporary beside the final path, then ``os.replace``)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from geoseg.errors import OutputError
from geoseg.paths import is_virtual


def check_output_path(path: str | os.PathLike[str], overwrite: bool, what: str = "output") -> Path:
    """Fail early, before any work, if ``path`` cannot be written."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"{what} {p} exists; pass --overwrite to replace it")
    if p.exists() and p.is_dir():
        raise OutputError(f"{what} {p} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{what} directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{what} directory {parent} is not writable; choose another location")
    return p


def path_identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """Resolved path and (device, inode) of a local path (the inode only when it exists)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def check_distinct_paths(
    inputs: dict[str, str | os.PathLike[str] | None],
    outputs: dict[str, str | os.PathLike[str] | None],
    owned_folders: dict[str, str | os.PathLike[str] | None] | None = None,
) -> None:
    """Refuse, before any work, an output that is an input or another output.

    Paths are the same when they resolve to one path (symlinks, ``..``) or are one file (hard
    links, case-insensitive file systems): the output would destroy the input, or two outputs
    would overwrite each other. ``owned_folders`` are folders geoseg fills and cleans itself
    (chip folders): no input may lie inside them. Virtual paths (``/vsis3/``, URLs) are skipped.
    """
    seen: list[tuple[str, str, tuple[str, tuple[int, int] | None]]] = []
    for what, path in inputs.items():
        if path is not None and not is_virtual(str(path)):
            seen.append(("input", what, path_identity(str(path))))
    for what, path in outputs.items():
        if path is None or is_virtual(str(path)):
            continue
        ident = path_identity(str(path))
        for kind, other, (real, inode) in seen:
            if ident[0] == real or (inode is not None and ident[1] == inode):
                if kind == "input":
                    raise OutputError(
                        f"{what} {path} is the same file as the {other} ({real}); writing it would "
                        f"destroy the {other}: choose another {what} path"
                    )
                raise OutputError(
                    f"{what} {path} and {other} are the same file ({real}); give them different names"
                )
        seen.append(("output", what, ident))
    for what, folder in (owned_folders or {}).items():
        if folder is None:
            continue
        root = os.path.realpath(folder)
        for kind, other, (real, _) in seen:
            if kind == "input" and os.path.commonpath([root, real]) == root:
                raise OutputError(
                    f"the {other} ({real}) lies inside {what} {folder}, which geoseg writes and "
                    "cleans; move it out, or choose another output folder"
                )


def create_exclusive(path: Path, mode: int = 0o600) -> int:
    """Create ``path`` only if nothing (not even a dangling symlink) is there; return its fd."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)


#: Lock file in every folder geoseg writes into; see :func:`folder_lock`.
LOCK_NAME = ".geoseg.lock"


#: Folder locks this process holds: resolved folder -> (fd, exclusive). Reentrant, so a batch
#: run holding its folder calls predict, which would lock the folder again.
_HELD_LOCKS: dict[str, tuple[int, bool]] = {}


@contextlib.contextmanager
def folder_lock(
    folder: Path, exclusive: bool, what: str = "geoseg run", holder: str = "geoseg batch"
) -> Iterator[None]:
    """Lock an output folder: shared by single runs (predict, vectorize), exclusive for a batch
    job or a chip run, which also remove what killed runs left behind. The kernel releases the
    lock when the process dies, so a lock held means a live run. The lock file is opened without
    following symlinks, and removed by the last run to leave. An exclusive ``holder`` writes its
    name and pid there, for the message another run gets."""
    import fcntl

    from geoseg.errors import FolderLockedError

    key = os.path.realpath(folder)
    if key in _HELD_LOCKS and not exclusive:
        yield  # this process writes there already (predict inside a batch job)
        return
    if key in _HELD_LOCKS:
        raise FolderLockedError(
            f"another run of geoseg in this process is writing into {folder}; "
            f"wait for it to finish or give this {what} another output folder"
        )
    path = Path(folder) / LOCK_NAME
    fd = _open_lock(path, exclusive, what)
    try:
        if exclusive:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{holder}, pid {os.getpid()}".encode(), 0)
        _HELD_LOCKS[key] = (fd, exclusive)
        yield
    finally:
        _HELD_LOCKS.pop(key, None)
        try:  # the last holder removes the file; one that cannot lock it alone leaves it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_inode(fd, path):
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def _same_inode(fd: int, path: Path) -> bool:
    try:
        st, here = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _open_lock(path: Path, exclusive: bool, what: str) -> int:
    """Open and flock the lock file; retried when it was removed between open and lock."""
    import fcntl

    from geoseg.errors import FolderLockedError

    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        except PermissionError:  # another user's lock file: reading is enough to lock it
            fd = os.open(path, os.O_RDONLY | nofollow)
        except OSError as exc:
            raise OutputError(
                f"cannot create the lock file {path} ({exc.strerror}); check the folder's "
                "permissions, and that the lock file is not a symlink"
            ) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            # a batch job holds it alone and says who it is; shared holders write nothing
            holder = "" if exclusive else os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FolderLockedError(
                f"another run of geoseg{f' ({holder})' if holder else ''} is writing into {path.parent}; "
                f"wait for it to finish or give this {what} another output folder"
            ) from None
        except OSError as exc:  # a file system without locks (some network file systems)
            from geoseg.errors import GeosegWarning

            warnings.warn(
                f"cannot lock {path.parent} ({exc.strerror}); make sure no other geoseg run "
                "writes there at the same time",
                GeosegWarning,
                stacklevel=4,
            )
            return fd
        if _same_inode(fd, path):
            return fd
        os.close(fd)  # its last holder removed it meanwhile: lock the new one
    raise OutputError(f"cannot lock {path}: it keeps changing; is another program removing it?")


def lock_output_folders(
    paths: Sequence[str | os.PathLike[str] | None], what: str
) -> contextlib.ExitStack:
    """Shared locks (see :func:`folder_lock`) on the folders of ``paths``, held until the
    returned stack is closed."""
    stack = contextlib.ExitStack()
    folders = {
        os.path.realpath(Path(p).parent) for p in paths if p is not None and not is_virtual(str(p))
    }
    try:
        for folder in sorted(folders):
            stack.enter_context(folder_lock(Path(folder), exclusive=False, what=what))
    except BaseException:
        stack.close()
        raise
    return stack


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` can only be read by setting
    it, which would briefly give files made by other threads the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the only other way
    os.umask(mask)
    return mask


def publish_mode() -> int:
    """The mode a published output gets: what the user's umask leaves of 0666, as GDAL and any
    other program creating a file get (temporary files stay 0600 until they are published)."""
    return 0o666 & ~current_umask()


def publish_file(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename a finished temporary file onto its final path with the mode of
    :func:`publish_mode` (a reader sees the whole file or the one before)."""
    os.chmod(tmp, publish_mode())
    os.replace(tmp, final)


def temporary_sibling(path: Path, suffix: str = ".tif") -> Path:
    """A fresh hidden file next to ``path`` (so the final rename stays on one file system),
    created exclusively with an unpredictable name; the caller writes over it and renames it."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(
    final: str | os.PathLike[str], suffix: str | None = None, create: bool = True
) -> Iterator[Path]:
    """A hidden temporary beside ``final`` for a writer that wants a path (torch.save, onnx.save,
    GDAL, pyogrio): published onto ``final`` (:func:`publish_file`) when the block succeeds,
    removed when it fails, so nothing partial is ever at ``final``. ``suffix`` (default:
    ``final``'s) ends the temporary's name, for writers that choose a format by it;
    ``create=False`` leaves no file there, for drivers that refuse to write over one (GPKG)."""
    final = Path(final)
    tmp = temporary_sibling(final, final.suffix if suffix is None else suffix)
    try:
        if not create:
            os.unlink(tmp)
        yield tmp
        publish_file(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(*paths: Path | None) -> None:
    for p in paths:
        if p is not None:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            with contextlib.suppress(FileNotFoundError):
                Path(str(p) + ".aux.xml").unlink()


def publish_all(staged: Sequence[tuple[Path, Path]], then: Callable[[], Any] | None = None) -> None:
    """Rename each staged file onto its final path, all or nothing, then run ``then``.

    A file already at a final path is kept as a hidden hard link (or renamed aside) until every
    rename and ``then`` succeeded; if one fails, the renames are undone and the previous outputs
    are back exactly as they were.
    """
    backups: list[tuple[Path, Path | None]] = []  # (final, its previous content or None)
    try:
        for tmp, final in staged:
            backup: Path | None = None
            if os.path.lexists(final):
                backup = temporary_sibling(final, ".old")
                os.unlink(backup)
                try:
                    os.link(final, backup, follow_symlinks=False)
                except OSError:  # no hard links here: move it aside instead
                    os.replace(final, backup)
            backups.append((final, backup))
            publish_file(tmp, final)
        if then is not None:
            then()
    except BaseException:
        for final, backup in reversed(backups):
            with contextlib.suppress(OSError):
                if backup is None:
                    final.unlink()
                elif os.path.samestat(os.lstat(backup), os.lstat(final)):
                    backup.unlink()  # never replaced: the hard link is not needed
                else:
                    os.replace(backup, final)
        raise
    for _, backup in backups:
        if backup is not None:
            with contextlib.suppress(FileNotFoundError):
                backup.unlink()


def stage_bytes(path: Path, data: bytes, suffix: str = ".part") -> Path:
    """``data`` in a fresh hidden temporary beside ``path`` (created exclusively, never through
    a symlink), to be renamed onto ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def stage_json(path: Path, data: Any) -> Path:
    """``data`` as JSON in a fresh hidden temporary beside ``path`` (:func:`stage_bytes`)."""
    return stage_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode(), ".part.json")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` through :func:`stage_bytes`, then rename it onto ``path``: a reader sees
    the whole file or none."""
    tmp = stage_bytes(path, data)
    try:
        publish_file(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())
