"""One block task of ``geoseg stats``: a window of the class raster counted per (zone, class),
in strips, by the compiled kernel :mod:`geoseg.results._zonal` from the pixels and the zones'
edges (see :mod:`geoseg.results.coverage` for the method, :mod:`geoseg.results.stats` for the
run and docs/results.md for the measurements)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.errors import ResultsError
from geoseg.raster.read import no_georef_warning, read_env
from geoseg.results.areas import row_areas


@dataclass(frozen=True)
class StatsTask:
    """One block of the class raster and the edges of the zones that reach into it
    (``edges``: rows ``x0, y0, x1, y1`` in the raster's pixels, x = column, y = row, and
    ``edge_zones``: rows of each one's zone number and that of the neighbour sharing it, -1 for
    none), counted ``strip`` rows at a time (0: all at once); paths, windows and small arrays
    only. Pixels are invalid where they hold ``nodata``, or where the raster's mask says so when
    ``masked``; ``values``: the classes its metadata names (the values to expect)."""

    raster: str
    row_off: int
    col_off: int
    height: int
    width: int
    crs_wkt: str
    transform: tuple[float, ...]
    raster_height: int
    edges: np.ndarray | None = None
    edge_zones: np.ndarray | None = None
    strip: int = 0
    nodata: int | None = None
    masked: bool = False
    values: tuple[int, ...] = ()


@dataclass
class BlockCounts:
    """Pixels (covered fractions with zones) and m² per (zone, class) of one block; zone -1
    when counting without zones."""

    zone: np.ndarray
    value: np.ndarray
    pixels: np.ndarray
    area: np.ndarray


def count_block(task: StatsTask) -> BlockCounts:
    """Count one block, a strip of rows at a time: the valid pixels by value, weighted by each
    row's pixel area, and with zones each pixel weighted by the fraction of it the zone
    covers."""
    step = task.strip or task.height
    parts = []
    for row_off in range(task.row_off, task.row_off + task.height, step):
        height = min(step, task.row_off + task.height - row_off)
        edges = zones = None
        if task.edges is not None and task.edge_zones is not None:
            y0, y1 = task.edges[:, 1], task.edges[:, 3]
            pick = (np.maximum(y0, y1) > row_off) & (np.minimum(y0, y1) < row_off + height)
            edges, zones = task.edges[pick], task.edge_zones[pick]
            if not len(zones):
                continue
        parts.append(_count_window(task, row_off, height, edges, zones))
    if len(parts) == 1:
        return parts[0]
    zone = np.concatenate([p.zone for p in parts] or [np.zeros(0, np.int64)])
    value = np.concatenate([p.value for p in parts] or [np.zeros(0, np.int64)])
    key, index = np.unique(np.column_stack([zone, value]), axis=0, return_inverse=True)
    index = index.ravel()
    pixels = np.bincount(index, np.concatenate([p.pixels for p in parts]), len(key))
    area = np.bincount(index, np.concatenate([p.area for p in parts]), len(key))
    return BlockCounts(key[:, 0], key[:, 1], pixels, area)


def _count_window(
    task: StatsTask,
    row_off: int,
    height: int,
    edges: np.ndarray | None,
    edge_zones: np.ndarray | None,
) -> BlockCounts:
    """:func:`count_block` for the rows ``row_off .. row_off + height`` of the block and
    ``edges`` (rows ``x0, y0, x1, y1``) of ``edge_zones`` reaching into them."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    window = Window(task.col_off, row_off, task.width, height)
    # each of the raster's blocks is read once: GDAL's cache at its least (growing it to hold
    # blocks no read comes back for cost a page fault per 4 KB)
    with read_env(task.raster), no_georef_warning():
        src = _open_raster(task.raster)
        data = src.read(
            1,
            window=window,
            out=_scratch("data", (height, task.width), np.dtype(src.dtypes[0])),
        )
        # an internal mask or alpha: kept apart, so the values keep their own small type
        valid = src.read_masks(1, window=window) > 0 if task.masked else None
    areas = row_areas(
        CRS.from_wkt(task.crs_wkt),
        Affine(*task.transform),
        task.raster_height,
        row_off,
        height,
    )
    slots = _Slots(data, valid, task)
    if edges is None or edge_zones is None:
        zone_ids = np.full(1, -1, np.int64)
        pixels, area = slots.count(None, areas)
    else:
        zone_ids, strip_edges = _strip_edges(task, row_off, edges, edge_zones)
        pixels, area = slots.count(strip_edges, areas)
    return _block_counts(zone_ids, *slots.by_value(pixels, area))


#: This thread's open datasets, by path and the file's state: a worker's stats tasks reuse one
#: handle instead of opening the file for every block.
_OPEN = threading.local()


def _open_raster(path: str) -> Any:
    """This thread's open dataset of ``path`` as its file is now (opened on first use)."""
    from geoseg.raster.scenes import file_token

    key = (path, repr(file_token(path)))
    cache: dict[tuple[str, str], Any] = getattr(_OPEN, "datasets", None) or {}
    src = cache.get(key)
    if src is None:
        for old in [k for k in cache if k[0] == path]:  # the file changed: its old handle is stale
            cache.pop(old).close()
        while len(cache) >= 2:
            cache.pop(next(iter(cache))).close()
        src = cache[key] = rasterio.open(path)
        _OPEN.datasets = cache
    return src


def _block_counts(
    zone_ids: np.ndarray, pixels: np.ndarray, area: np.ndarray, values: np.ndarray
) -> BlockCounts:
    """The non-zero cells of ``(zone, column)`` arrays of pixels and m² (``values``: each
    column's value)."""
    z, v = np.nonzero(pixels)
    return BlockCounts(zone_ids[z], values[v], pixels[z, v], area[z, v])


#: This thread's work buffers, kept from block to block.
_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """This thread's buffer ``name`` as an array of ``shape`` (contents undefined). A new array
    of a block's size costs a page fault per 4 KB on its first use (about 5 µs each on a
    virtual machine: several ms a block), a kept one nothing; memory stays one block's worth."""
    size = int(np.prod(shape)) * dtype.itemsize
    buffers: dict[str, np.ndarray] = getattr(_SCRATCH, "buffers", None) or {}
    buf = buffers.get(name)
    if buf is None or buf.size < size:
        buf = buffers[name] = np.empty(size, np.uint8)
        _SCRATCH.buffers = buffers
    return buf[:size].view(dtype).reshape(shape)


class _Slots:
    """A block's pixels as the counting kernel's slots (:mod:`geoseg.results._zonal`): the
    classes the raster's metadata names, then any other value the block holds (found when the
    kernel's "other" slot counts something: a raster without class metadata), nodata and masked
    pixels ignored. 8- and 16-bit pixels index a table of slots; wider ones are numbered first."""

    def __init__(self, data: np.ndarray, valid: np.ndarray | None, task: StatsTask) -> None:
        self.shape = data.shape
        self.valid = None if valid is None else np.ascontiguousarray(valid).view(np.uint8)
        self.nodata = task.nodata
        self.codes: np.ndarray | None = None  # the values of wider pixels, by number
        if data.dtype.itemsize <= 2 and data.dtype.kind in "ui":
            self.pixels = data.view(np.uint8 if data.dtype.itemsize == 1 else np.uint16)
            self.signed = data.dtype.kind == "i"
        else:
            codes, numbers = np.unique(data, return_inverse=True)
            if len(codes) > 65535:
                raise ResultsError(
                    f"{task.raster} holds more than 65,535 values in one block: not classes; "
                    "give a class raster"
                )
            self.codes, self.signed = codes, False
            self.pixels = numbers.reshape(data.shape).astype(np.uint16)
        self.size = 1 << (8 * self.pixels.dtype.itemsize)
        info = np.iinfo(data.dtype)  # an integer raster (raster_class_info refuses others)
        self.values = [v for v in task.values if v != self.nodata and info.min <= v <= info.max]

    def _index(self, value: int) -> int | None:
        """The table index of a pixel ``value`` (None: no pixel holds it)."""
        if self.codes is not None:
            at = int(np.searchsorted(self.codes, value))
            return at if at < len(self.codes) and self.codes[at] == value else None
        return int(value) % self.size

    def _value(self, index: int) -> int:
        """The pixel value at table ``index``."""
        if self.codes is not None:
            return int(self.codes[index])
        return index - self.size if self.signed and index >= self.size // 2 else index

    def _lut(self) -> np.ndarray:
        """Slot of every table index: the values' numbers, ``len(values)`` for any other value,
        one more (ignored) for nodata."""
        k = len(self.values)
        lut = np.full(self.size, k, np.uint16)
        for s, v in enumerate(self.values):
            at = self._index(v)
            if at is not None:
                lut[at] = s
        at = None if self.nodata is None else self._index(self.nodata)
        if at is not None:
            lut[at] = k + 1
        return lut

    def count(self, edges: StripEdges | None, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (covered fractions) and m² by (zone, slot) of the zones of ``edges``, or of
        the whole block (one zone) without them; ``areas``: m² of a pixel by row."""
        from geoseg.results._zonal import count_strip

        h, w = self.shape
        xy, z = np.zeros(0), np.zeros(0, np.int64)
        e = edges or StripEdges(xy, xy, xy, xy, z, z, 1)
        whole = edges is None  # the block's own count: into the one row
        same_area = bool(np.all(areas == areas[0]))  # then m² are the pixels times one area
        while True:
            k = len(self.values) + 1
            pix = np.zeros((e.zones, k))
            area = None if same_area else np.zeros((e.zones, k))
            count_strip(
                self.pixels,
                self.valid,
                self._lut(),
                h,
                w,
                k,
                e.x0,
                e.y0,
                e.x1,
                e.y1,
                e.zone,
                e.other,
                e.zones,
                None if same_area else areas,
                pix,
                area,
                pix[0] if whole else None,
                area[0] if whole and area is not None else None,
            )
            if not pix[:, -1].any() or not self._widen():
                break
        if not whole:
            pix, area = pix[:-1], None if area is None else area[:-1]  # the spare zone
        return pix[:, :-1], (pix * areas[0] if area is None else area)[:, :-1]

    def _widen(self) -> bool:
        """Add the values the block holds that are not yet slots; whether there were any."""
        if self.codes is not None:
            present = range(len(self.codes))
        else:
            held = self.pixels if self.valid is None else self.pixels[self.valid.view(bool)]
            present = np.flatnonzero(np.bincount(held.ravel(), minlength=self.size)).tolist()
        extra = {self._value(i) for i in present} - set(self.values) - {self.nodata}
        self.values += sorted(extra)
        return bool(extra)

    def by_value(self, pixels: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(zone, slot)`` arrays as ``(pixels, m², values)``, negative values (no classes)
        dropped."""
        values = np.asarray(self.values, np.int64)
        keep = values >= 0
        return pixels[:, keep], area[:, keep], values[keep]


class StripEdges(NamedTuple):
    """The zones' edges ``(x0, y0) -> (x1, y1)`` in a strip's pixels (x = column, y = row), the
    zone of each and its neighbour across a shared border, numbered ``0 .. zones - 1`` (the
    last: the neighbour of edges no other zone shares), as the kernel takes them."""

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    zone: np.ndarray
    other: np.ndarray
    zones: int


def _strip_edges(
    task: StatsTask, row_off: int, e: np.ndarray, edge_zones: np.ndarray
) -> tuple[np.ndarray, StripEdges]:
    """The zones of a strip (their numbers among the raster's zones) and their edges ``e``
    (rows ``x0, y0, x1, y1`` in the raster's pixels; ``edge_zones``: zone and neighbour of
    each, -1 for none) in the strip's pixels, the zones numbered from 0."""
    zone_ids = np.unique(edge_zones[edge_zones >= 0])
    count = len(zone_ids)
    local = np.searchsorted(zone_ids, edge_zones)
    local[edge_zones < 0] = count
    shift = np.array([task.col_off, row_off, task.col_off, row_off], np.float64)
    x0, y0, x1, y1 = np.ascontiguousarray((e - shift).T)
    zone, other = np.ascontiguousarray(local.T)
    return zone_ids, StripEdges(x0, y0, x1, y1, zone, other, count + 1)
