"""Scenes in, class rasters out: opening and validating scenes, reading mirrored tile inputs,
and writing class/probability rasters that become Cloud-Optimized GeoTIFFs by atomic rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

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
    "VSI_CACHE": True,
    # GDAL's block cache would otherwise grow to 5% of RAM per process with the scene size
    "GDAL_CACHEMAX": 128,
}

#: Block cache (MB) while writing: partial blocks are flushed instead of piling up in memory.
WRITE_CACHE_MB = 64
#: DEFLATE threads for the temporary GeoTIFF and the COG (GDAL's NUM_THREADS creation option),
#: so one client keeps up with many workers.
WRITE_THREADS = "ALL_CPUS"

#: GDAL compression threads for every raster geoseg writes (the temporary GeoTIFF's DEFLATE
#: blocks and the COG conversion): the client's writing keeps pace with many workers.
WRITE_THREADS = "ALL_CPUS"

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@contextlib.contextmanager
def no_georef_warning() -> Iterator[None]:
    """Silence rasterio's warning for rasters without georeferencing: predict warns once itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


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
        with rasterio.Env(**READ_ENV), no_georef_warning():
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
                    block_shape=tuple(src.block_shapes[0]),  # type: ignore[arg-type]
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
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that may reach past the scene, mirroring the scene at its edges.

    Returns ``(data, valid)``: data (bands, height, width) in the scene's dtype, and a boolean
    mask of pixels that hold data (nodata value, NaN, internal or alpha masks are invalid).
    """
    rows = source_indices(row_start, height, src.height)
    cols = source_indices(col_start, width, src.width)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    window = Window(c0, r0, c1 - c0, r1 - r0)
    from geoseg.scenes import describe

    failure: str | None = None
    try:
        block = src.read(list(bands), window=window)
        mask = src.dataset_mask(window=window) > 0
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
    ri = rows - r0
    ci = cols - c0
    data = block[:, ri[:, None], ci[None, :]]
    valid = mask[ri[:, None], ci[None, :]]
    return data, valid


def file_token(path: str) -> tuple[int, int] | None | list[Any]:
    """Size and modification time of a local file (None for virtual paths; one per source file of
    a VRT string): part of task keys, so a changed file never reuses results from its old content."""
    from geoseg.scenes import is_vrt_xml, vrt_sources

    if is_vrt_xml(path):
        return [file_token(s) for s in vrt_sources(path)]
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


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


def temporary_sibling(path: Path, suffix: str = ".tif") -> Path:
    """A fresh hidden file name next to ``path``, so the final rename stays on one file system."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


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
            "blockxsize": 512,
            "blockysize": 512,
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
        self._dst.close()
        self.cog_tmp = temporary_sibling(self.path)
        with rasterio.Env(GDAL_NUM_THREADS=WRITE_THREADS), no_georef_warning():
            rasterio.shutil.copy(
                str(self.tmp),
                str(self.cog_tmp),
                driver="COG",
                COMPRESS="DEFLATE",
                NUM_THREADS=WRITE_THREADS,
                BLOCKSIZE=512,
                OVERVIEW_RESAMPLING=self.overview_resampling,
                BIGTIFF="IF_SAFER",
            )
        remove_quietly(self.tmp)
        os.replace(self.cog_tmp, self.path)
        remove_quietly(Path(str(self.cog_tmp) + ".aux.xml"))
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        with contextlib.suppress(Exception):
            self._dst.close()
        remove_quietly(self.tmp, self.cog_tmp)


@contextlib.contextmanager
def open_sinks(*sinks_factories: Any) -> Iterator[list[RasterSink]]:
    """Create sinks; commit all on success, abort all on any failure (including KeyboardInterrupt)."""
    sinks: list[RasterSink] = []
    try:
        for factory in sinks_factories:
            if factory is not None:
                sinks.append(factory())
        yield sinks
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    else:
        done: list[RasterSink] = []
        try:
            for s in sinks:
                s.commit()
                done.append(s)
        except BaseException:
            for s in sinks:
                s.abort()
            for s in done:
                remove_quietly(s.path)
            raise


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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a hidden temporary beside ``path``, then rename."""
    import json

    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
