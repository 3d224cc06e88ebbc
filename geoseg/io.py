"""Scenes in, class rasters out: opening and validating scenes, reading mirrored tile inputs,
and writing class/probability rasters that become Cloud-Optimized GeoTIFFs by atomic rename."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from geoseg.block_cache import bound_block_cache
from geoseg.errors import OutputError, SceneError, first_line
from geoseg.tiling import source_indices

#: Class id written where the scene has no data (and so no prediction), in uint8 class rasters.
CLASS_NODATA = 255
#: The same in uint16 class rasters, for models with class values above 254.
CLASS_NODATA_16 = 65535


#: GDAL settings for every scene read; scoped with rasterio.Env, never put into os.environ.
READ_ENV: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.img",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}
#: Added for scenes read over the network: a cache of each open file's fetched bytes (up to 25
#: MB per file). A local file has the OS page cache; there it only held 25 MB more memory.
REMOTE_READ_ENV: dict[str, Any] = {"VSI_CACHE": True}
#: Path parts that mark a scene read over the network (GDAL's network file systems, URLs).
_REMOTE_MARKS = ("://", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
                 "/vsihdfs", "/vsiwebhdfs")

def is_remote(path: str) -> bool:
    """True for scenes GDAL reads over the network (URLs, ``/vsicurl/``, cloud buckets), also
    inside a ``/vsizip/`` chain or a VRT's XML."""
    return any(mark in path for mark in _REMOTE_MARKS)


def read_env(path: str | None = None, cache_bytes: int | None = None) -> rasterio.Env:
    """The GDAL environment for reading ``path`` (:data:`READ_ENV`, with :data:`REMOTE_READ_ENV`
    for a network file), the block cache grown to ``cache_bytes``
    (:func:`geoseg.block_cache.bound_block_cache`)."""
    bound_block_cache(cache_bytes)
    remote: dict[str, Any] = dict(REMOTE_READ_ENV) if path is not None and is_remote(path) else {}
    if path is not None and ("s3://" in path or "/vsis3/" in path):
        from geoseg.objectstore import gdal_s3_env

        remote.update(gdal_s3_env())  # the endpoint of AWS_ENDPOINT_URL, as boto3 reads it
    return rasterio.Env(**READ_ENV, **remote)


#: GDAL compression threads for every raster geoseg writes (the temporary GeoTIFF's DEFLATE
#: blocks and the COG conversion): the client's writing keeps pace with many workers.
WRITE_THREADS = "ALL_CPUS"

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


_GEOREF_LOCK = threading.Lock()
_GEOREF_USERS = 0
# a module pattern makes this filter differ from a plain "ignore::NotGeoreferencedWarning" that a
# caller (or pytest's configuration) has installed: leaving must remove ours, never theirs
_GEOREF_FILTER = ("ignore", None, NotGeoreferencedWarning, re.compile(".*"), 0)


@contextlib.contextmanager
def no_georef_warning() -> Iterator[None]:
    """Silence rasterio's warning for rasters without georeferencing: predict warns once itself.

    Thread-safe, unlike ``warnings.catch_warnings`` (which saves and restores the process's whole
    filter list, so one thread leaving could lift the filter while another is still inside: batch
    runs scenes and Dask runs tasks in threads). The filter stays while any thread is inside."""
    global _GEOREF_USERS
    with _GEOREF_LOCK:
        if _GEOREF_USERS == 0:
            warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module=".*")
        _GEOREF_USERS += 1
    try:
        yield
    finally:
        with _GEOREF_LOCK:
            _GEOREF_USERS -= 1
            if _GEOREF_USERS == 0:
                with contextlib.suppress(ValueError):  # gone already if someone reset the filters
                    warnings.filters.remove(_GEOREF_FILTER)  # type: ignore[attr-defined]
                    warnings._filters_mutated()  # type: ignore[attr-defined]


def is_virtual(path: str) -> bool:
    """True for GDAL virtual paths, URLs and VRT XML strings, which os.path cannot check."""
    from geoseg.scenes import is_vrt_xml

    return path.startswith("/vsi") or "://" in path or is_vrt_xml(path)


@dataclass(frozen=True)
class SceneInfo:
    """What predict needs to know about a scene, read once on the client."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    descriptions: tuple[str | None, ...]
    block_shape: tuple[int, int]
    georeferenced: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def open_scene(path: str | os.PathLike[str]) -> SceneInfo:
    """Open and describe a scene, turning GDAL's failures into one-line :class:`SceneError`."""
    path = str(path)
    if not is_virtual(path):
        if not os.path.exists(path):
            raise SceneError(f"scene not found: {path}; check the path")
        if os.path.isdir(path):
            raise SceneError(f"{path} is a directory, not a raster; give a GeoTIFF file")
        if not os.access(path, os.R_OK):
            raise SceneError(f"scene {path} is not readable; check its permissions")
    try:
        with read_env(path), no_georef_warning():
            with rasterio.open(path) as src:
                dtypes = set(src.dtypes)
                if len(dtypes) != 1:
                    raise SceneError(
                        f"scene {path} mixes band types {sorted(dtypes)}; "
                        "convert it to one type (gdal_translate -ot Float32)"
                    )
                dtype = src.dtypes[0]
                if dtype not in SUPPORTED_DTYPES:
                    raise SceneError(
                        f"scene {path} has {dtype} bands, which geoseg cannot segment; "
                        f"convert to one of {', '.join(SUPPORTED_DTYPES)}"
                    )
                georef = src.crs is not None and not src.transform.is_identity
                info = SceneInfo(
                    path=path,
                    width=src.width,
                    height=src.height,
                    count=src.count,
                    dtype=dtype,
                    crs=src.crs,
                    transform=src.transform,
                    nodata=src.nodata,
                    descriptions=tuple(src.descriptions),
                    block_shape=tuple(src.block_shapes[0]),
                    georeferenced=georef,
                )
    except SceneError:
        raise
    except RasterioIOError as exc:
        raise SceneError(
            f"{path} is not a raster GDAL can read ({first_line(exc)}); give a GeoTIFF or another "
            "GDAL raster"
        ) from exc
    except RasterioError as exc:
        raise SceneError(f"cannot open scene {path}: {first_line(exc)}") from exc
    return info


def root_cause(exc: BaseException) -> str:
    """The innermost message of an exception chain (GDAL's own words, under rasterio's)."""
    seen = exc
    while seen.__cause__ is not None or (seen.__context__ is not None and not seen.__suppress_context__):
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return first_line(seen)


def select_bands(spec: str | Sequence[int] | None, count: int) -> list[int]:
    """Scene bands (1-based, in order) from ``"3,2,1"`` or a sequence; None means all of them."""
    if spec is None:
        return list(range(1, count + 1))
    if isinstance(spec, str):
        try:
            bands = [int(b) for b in spec.replace(" ", "").split(",") if b]
        except ValueError:
            raise SceneError(f"--bands {spec!r} is not a comma-separated list of band numbers") from None
    else:
        bands = [int(b) for b in spec]
    bad = [b for b in bands if not 1 <= b <= count]
    if bad or not bands:
        raise SceneError(f"--bands {bad or spec!r} out of range: the scene has bands 1 to {count}")
    return bands


def parse_bands(spec: str | Sequence[int] | None, count: int, expected: int) -> list[int]:
    """Scene bands that feed a model expecting ``expected`` of them; checked against both sides."""
    if spec is None and count != expected:
        raise SceneError(
            f"the scene has {count} band(s) but the model expects {expected}; "
            f"choose {expected} of them with --bands (for example --bands "
            f"{','.join(str(i + 1) for i in range(min(expected, count)))})"
        )
    bands = select_bands(spec, count)
    if len(bands) != expected:
        raise SceneError(
            f"--bands gives {len(bands)} band(s) but the model expects {expected}; "
            f"list exactly {expected}"
        )
    return bands


def read_mirrored(
    src: rasterio.io.DatasetReader,
    bands: Sequence[int],
    row_start: int,
    col_start: int,
    height: int,
    width: int,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that may reach past the scene, mirroring the scene at its edges.

    Returns ``(data, valid)``: data (bands, height, width) in the scene's dtype, and a boolean
    mask of pixels that hold data (nodata value, NaN, internal or alpha masks are invalid).
    ``out``: arrays of those shapes to read into (a tile of a batch: no copy of the window).
    """
    own = getattr(src, "read_mirrored", None)
    if own is not None:  # a map's cell mirrors at the region's edges (geoseg.mapping.mosaic_source)
        return own(bands, row_start, col_start, height, width, out)
    rows = source_indices(row_start, height, src.height)
    cols = source_indices(col_start, width, src.width)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    window = Window(c0, r0, c1 - c0, r1 - r0)
    from geoseg.scenes import describe

    inside = _in_order(rows) and _in_order(cols)  # nothing mirrored: the window is the block
    into = out if out is not None and inside else (None, None)
    failure: str | None = None
    try:
        block = src.read(list(bands), window=window, out=into[0])
        mask = np.greater(src.dataset_mask(window=window), 0, out=into[1])
    except RasterioError as exc:
        failure = root_cause(exc)
    if failure is not None:
        # Raised outside the except block: GDAL's exception chain does not survive pickling
        # back from a Dask worker, and this message says all of it.
        raise SceneError(
            f"cannot read window (col {c0}, row {r0}, {c1 - c0}x{r1 - r0}) of {describe(src.name)}: "
            f"{failure}; the file may be corrupt or truncated"
        )
    if np.issubdtype(block.dtype, np.floating):
        mask &= ~np.isnan(block).any(axis=0)
    if inside:
        return block, mask
    ri = rows - r0
    ci = cols - c0
    data = block[:, ri[:, None], ci[None, :]]
    valid = mask[ri[:, None], ci[None, :]]
    if out is None:
        return data, valid
    out[0][...] = data
    out[1][...] = valid
    return out


def _in_order(indices: np.ndarray) -> bool:
    """Whether ``indices`` are consecutive and ascending (nothing mirrored)."""
    return bool(np.all(np.diff(indices) == 1))


def file_token(path: str) -> tuple[Any, ...] | list[Any] | None:
    """What identifies a scene's content cheaply, in task keys and batch records, so a changed
    file never reuses results from its old content: a local file's size and modification time;
    one token per source file of a VRT string; for a local STAC item also one per raster asset,
    by key (an asset rewritten in place is a new scene); None for virtual paths."""
    from geoseg.scenes import is_stac_item, is_vrt_xml, vrt_sources

    if is_vrt_xml(path):
        return [file_token(s) for s in vrt_sources(path)]
    if path.startswith("geoseg-mosaic:"):  # a map's cell records its scenes' tokens
        from geoseg.mapping.mosaic_source import mosaic_tokens

        return mosaic_tokens(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if is_stac_item(path):
        return st.st_size, st.st_mtime_ns, _stac_asset_tokens(path)
    return st.st_size, st.st_mtime_ns


def _stac_asset_tokens(item_path: str) -> dict[str, Any] | None:
    """:func:`file_token` of each raster asset of a local STAC item, by asset key (None for an
    unreadable item)."""
    from geoseg.scenes import asset_path, is_raster_asset, read_stac_item

    try:
        item = read_stac_item(item_path)
    except SceneError:
        return None
    return {key: file_token(asset_path(str(asset["href"]), item_path))
            for key, asset in sorted(item["assets"].items())
            if isinstance(asset, dict) and "href" in asset and is_raster_asset(asset)}


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
def folder_lock(folder: Path, exclusive: bool, what: str = "geoseg run",
                holder: str = "geoseg batch") -> Iterator[None]:
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
        raise FolderLockedError(f"another run of geoseg in this process is writing into {folder}; "
                                f"wait for it to finish or give this {what} another output folder")
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
            raise OutputError(f"cannot create the lock file {path} ({exc.strerror}); check the folder's "
                              "permissions, and that the lock file is not a symlink") from None
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

            warnings.warn(f"cannot lock {path.parent} ({exc.strerror}); make sure no other geoseg run "
                          "writes there at the same time", GeosegWarning, stacklevel=4)
            return fd
        if _same_inode(fd, path):
            return fd
        os.close(fd)  # its last holder removed it meanwhile: lock the new one
    raise OutputError(f"cannot lock {path}: it keeps changing; is another program removing it?")


def lock_output_folders(paths: Sequence[str | os.PathLike[str] | None], what: str) -> contextlib.ExitStack:
    """Shared locks (see :func:`folder_lock`) on the folders of ``paths``, held until the
    returned stack is closed."""
    stack = contextlib.ExitStack()
    folders = {os.path.realpath(Path(p).parent) for p in paths if p is not None and not is_virtual(str(p))}
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
def atomic_path(final: str | os.PathLike[str], suffix: str | None = None,
                create: bool = True) -> Iterator[Path]:
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


def class_raster_dtype(values: Sequence[int]) -> tuple[str, int]:
    """``(dtype, nodata)`` of the class raster for these class values: uint8 with nodata 255 while
    every value fits in 0..254, else uint16 with nodata 65535. The one place this is decided
    (sinks, the worker's argmax lookup, engines)."""
    top = max((int(v) for v in values), default=0)
    return ("uint8", CLASS_NODATA) if top < CLASS_NODATA else ("uint16", CLASS_NODATA_16)


@dataclass(frozen=True)
class ClassInfo:
    """A class as written into the output raster: value, name and RGB colour."""

    value: int
    name: str
    color: tuple[int, int, int]


#: Block size of the temporary GeoTIFFs predict writes into (and of their COGs).
SINK_BLOCK = 512


def overview_factors(width: int, height: int, block: int = SINK_BLOCK) -> list[int]:
    """Overview levels as GDAL's COG driver picks them: halve until neither side, rounded down,
    is larger than one block."""
    factors: list[int] = []
    f = 1
    while max(width // f, height // f) > block:
        f *= 2
        factors.append(f)
    return factors


class RasterSink:
    """A tiled, compressed temporary GeoTIFF written window by window, then published as a COG.

    The final path is touched only by ``os.replace`` in :meth:`commit`; anything else (an
    exception, an interrupt) leaves at most hidden temporary files, which :meth:`abort` removes.
    """

    def __init__(
        self,
        path: Path,
        scene: SceneInfo,
        count: int,
        nodata: int | None,
        classes: Sequence[ClassInfo] | None = None,
        tags: dict[str, str] | None = None,
        band_descriptions: Sequence[str] | None = None,
        overview_resampling: str = "MODE",
        dtype: str = "uint8",
    ) -> None:
        self.path = path
        bound_block_cache()
        self.scene = scene
        self.overview_resampling = overview_resampling
        self.tmp = temporary_sibling(path)
        self.cog_tmp: Path | None = None
        est_bytes = scene.pixels * count * np.dtype(dtype).itemsize
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": scene.width,
            "height": scene.height,
            "count": count,
            "dtype": dtype,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": SINK_BLOCK,
            "blockysize": SINK_BLOCK,
            "compress": "deflate",
            "predictor": 1,
            "BIGTIFF": "YES" if est_bytes > 3_500_000_000 else "IF_SAFER",
            "interleave": "band",
            "num_threads": WRITE_THREADS,
        }
        if scene.georeferenced:
            profile["crs"] = scene.crs
            profile["transform"] = scene.transform
        with no_georef_warning():
            self._dst = rasterio.open(self.tmp, "w", **profile)
        if classes is not None:
            cmap = {c.value: (*c.color, 255) for c in classes}
            if nodata is not None:
                cmap.setdefault(nodata, (0, 0, 0, 0))
            self._dst.write_colormap(1, cmap)
            self._dst.colorinterp = [ColorInterp.palette]
        if tags:
            self._dst.update_tags(**tags)
        for i, desc in enumerate(band_descriptions or (), start=1):
            self._dst.set_band_description(i, desc)

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write (bands, h, w) or (h, w) values of the sink's dtype into ``window``."""
        if array.ndim == 2:
            array = array[None]
        self._dst.write(array, window=window)

    def commit(self) -> Path:
        """Close the temporary file, convert it to a COG, and rename it onto the final path."""
        publish_all([(self.prepare(), self.path)])
        return self.path

    def prepare(self) -> Path:
        """Close the temporary file and convert it to a hidden COG beside the output; returns it.
        Nothing at the final path changes yet (see :func:`publish_all`)."""
        self._dst.close()
        self.cog_tmp = temporary_sibling(self.path)
        with rasterio.Env(GDAL_NUM_THREADS=WRITE_THREADS), no_georef_warning():
            # overviews built into the temporary file first, which the COG driver then copies:
            # the same levels and pixels as its own, and the step's rise of peak memory at 4,096²
            # 20 MB instead of 36-38 MB
            factors = overview_factors(self.scene.width, self.scene.height)
            if factors:
                with rasterio.open(self.tmp, "r+") as dst:
                    dst.build_overviews(factors, Resampling[self.overview_resampling.lower()])
            rasterio.shutil.copy(
                str(self.tmp),
                str(self.cog_tmp),
                driver="COG",
                COMPRESS="DEFLATE",
                NUM_THREADS=WRITE_THREADS,
                BLOCKSIZE=SINK_BLOCK,
                OVERVIEW_RESAMPLING=self.overview_resampling,
                BIGTIFF="IF_SAFER",
            )
        remove_quietly(self.tmp)
        with contextlib.suppress(FileNotFoundError):
            Path(str(self.cog_tmp) + ".aux.xml").unlink()
        return self.cog_tmp

    def abort(self) -> None:
        """Drop everything written so far."""
        with contextlib.suppress(Exception):
            self._dst.close()
        remove_quietly(self.tmp, self.cog_tmp)


@contextlib.contextmanager
def open_sinks(
    *sinks_factories: Any, extra: list[tuple[Path, Path]] | None = None,
    then: Callable[[], Any] | None = None,
) -> Iterator[list[RasterSink]]:
    """Create sinks; commit all on success, abort all on any failure (including KeyboardInterrupt).

    The commit is all or nothing (:func:`publish_all`), together with ``extra`` staged files
    (temporary, final) the caller adds while writing, and ``then``, run once they are in place:
    if it fails, every output is put back as it was."""
    sinks: list[RasterSink] = []
    extra = extra if extra is not None else []
    try:
        for factory in sinks_factories:
            if factory is not None:
                sinks.append(factory())
        yield sinks
    except BaseException:
        for s in sinks:
            s.abort()
        remove_quietly(*(tmp for tmp, _ in extra))
        raise
    else:
        try:
            # every COG is made before any output is touched: a failure here (a full disk)
            # leaves the previous outputs exactly as they were
            staged = [(s.prepare(), s.path) for s in sinks]
            publish_all(staged + list(extra), then)
        except BaseException:
            for s in sinks:
                s.abort()
            remove_quietly(*(tmp for tmp, _ in extra))
            raise


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


def class_tags(classes: Sequence[ClassInfo], model_name: str) -> dict[str, str]:
    """Metadata that names the classes, readable by gdalinfo and QGIS."""
    return {
        "GEOSEG_CLASSES": json.dumps([{"value": c.value, "name": c.name} for c in classes]),
        "GEOSEG_MODEL": model_name,
        **{f"CLASS_{c.value}": c.name for c in classes},
    }


def read_class_names(src: Any) -> dict[int, str]:
    """Class value -> name from the metadata :func:`class_tags` writes (empty if absent)."""
    try:
        return {int(c["value"]): str(c["name"]) for c in json.loads(src.tags().get("GEOSEG_CLASSES", "[]"))}
    except (ValueError, KeyError, TypeError):
        return {}


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
