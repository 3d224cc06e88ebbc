"""Class areas of a class raster, in all and per zone, counted block by block on Dask.

Each block task reads its window of the raster (a path and a window, with the edges of the
zones that reach into it) and returns, per (zone, class), the pixels and square metres it holds;
the client sums them. Without zones the pixel counts are integers (a bincount); with zones a
pixel counts for a zone by the fraction of it the zone covers, exactly: each zone edge's pieces
in the block's pixels (:mod:`geoseg.results.coverage`) weighted by the pixels of each class at
and to the right of them in their row (see docs/results.md for the measurement against
centre-of-pixel rasterization).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.classes import ClassInfo
from geoseg.errors import ResultsError, first_line
from geoseg.fs import check_distinct_paths
from geoseg.raster.read import no_georef_warning, open_scene, read_env
from geoseg.results.areas import row_areas
from geoseg.results.blocks import block_session
from geoseg.results.classes import name_of, raster_class_info
from geoseg.results.tables import check_table_path, publish, stage_table

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots

#: Output formats of ``geoseg stats`` by extension.
STATS_FORMATS = (".csv", ".parquet", ".gpkg")
#: Columns of the stats table (``zone`` is named after the zone field, and only there with zones).
COLUMNS = ("class", "class_name", "pixels", "area_m2", "area_ha", "share")
#: Side of a block task in pixels (a multiple of the raster's own blocks, see :func:`_block_size`):
#: a Dask task costs about 4 ms of the scheduler's time, a 2048² block's counting about 10 ms.
BLOCK = 4096
#: Pixels counted at a time within a block (a strip of its rows): the work buffers of two
#: threads' strips (about 7 MB each) stay in the processor's cache (a 4096² block's class words
#: at once: 32 ms against 4 x 5 ms in strips; strips of 4096 x 1024: 8 % more CPU in a
#: 1,000-zone run).
STRIP_PIXELS = 2048 * 1024


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
    if edges is None and valid is None and bool(np.all(areas == areas[0])):
        found = _count_known(data, task.values, task.nodata)
        if found is not None:
            pixels = found[None, :].astype(np.float64)
            return _block_counts(np.full(1, -1, np.int64), pixels, pixels * areas[0])
    prefix = _ClassPrefix(data, valid, task)
    if edges is None or edge_zones is None:
        rows = prefix.row_counts()
        pixels = rows.sum(axis=1, dtype=np.float64)[None, :]
        return _block_counts(np.full(1, -1, np.int64), pixels, (rows @ areas)[None, :])
    zone_ids, pixels, area = _count_zones(
        task, row_off, edges, edge_zones, data, valid, areas, prefix
    )
    return _block_counts(zone_ids, pixels, area)


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


def _block_counts(zone_ids: np.ndarray, pixels: np.ndarray, area: np.ndarray) -> BlockCounts:
    """The non-zero cells of ``(zone, value)`` arrays of pixels and m²."""
    z, v = np.nonzero(pixels)
    return BlockCounts(zone_ids[z], v.astype(np.int64), pixels[z, v], area[z, v])


def _count_known(
    data: np.ndarray, values: tuple[int, ...], nodata: int | None
) -> np.ndarray | None:
    """Pixels of each of the raster's class ``values`` by comparisons (a few times faster than
    a bincount, which widens every pixel to 64 bits); None when the block holds other values."""
    if not values or data.dtype.kind not in "ui":
        return None
    wanted = sorted(set(values) | ({nodata} if nodata is not None else set()))
    info = np.iinfo(data.dtype)
    if wanted[0] < info.min or wanted[-1] > info.max:
        return None
    counts = np.zeros(wanted[-1] + 1, np.int64)
    flags = _scratch("flags", data.shape, np.dtype(bool))
    for v in wanted:
        counts[v] = np.count_nonzero(np.equal(data, v, out=flags))
    if counts.sum() != data.size:
        return None
    if nodata is not None:
        counts[nodata] = 0
    return counts


def _popcount(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Set bits of each uint64 (into ``out``, uint8, when given)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words, out=out)
    bits = np.unpackbits(words.reshape(-1).view(np.uint8)).reshape(-1, 64)  # pragma: no cover
    got = bits.sum(axis=1).reshape(words.shape)  # pragma: no cover
    if out is None:  # pragma: no cover
        return got
    out[...] = got  # pragma: no cover
    return out  # pragma: no cover


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


class _ClassPrefix:
    """How many valid pixels of a block hold each value before any flat position.

    One pass per value: the pixels holding it packed to bits, 64 to a word, and a running count
    per word (numpy compares, packs and counts in SIMD: about 0.1 ns a pixel); a count up to a
    position is the word's running count and the set bits of the word below it. ``values``: the
    raster's class values found in the block, then any others it holds (found by a bincount:
    a raster without class metadata); negative values are counted but are no classes.
    """

    def __init__(self, data: np.ndarray, valid: np.ndarray | None, task: StatsTask) -> None:
        self.shape = data.shape
        info = np.iinfo(data.dtype) if data.dtype.kind in "ui" else None
        nodata = task.nodata
        self.values = [
            v for v in task.values if v != nodata and (info is None or info.min <= v <= info.max)
        ]
        self._pack(data, valid)
        if int(self.before[:, -1].sum()) == data.size:  # every pixel holds a class
            return
        invalid = 0 if valid is None else data.size - int(np.count_nonzero(valid))
        if nodata is not None and (info is None or info.min <= nodata <= info.max):
            is_nodata = np.equal(data, nodata, out=_scratch("flags", data.shape, np.dtype(bool)))
            if valid is not None:
                is_nodata &= valid
            invalid += int(np.count_nonzero(is_nodata))
        if int(self.before[:, -1].sum()) + invalid != data.size:
            low = int(info.min) if info is not None else 0
            found = np.bincount(
                (data if valid is None else data[valid]).ravel().astype(np.int64) - low
            )
            known = set(self.values)
            self.values += [
                int(v) + low
                for v in np.flatnonzero(found)
                if int(v) + low not in known and int(v) + low != nodata
            ]
            self._pack(data, valid)

    def _pack(self, data: np.ndarray, valid: np.ndarray | None) -> None:
        """The words and running counts of every value."""
        flat = data.ravel()
        ok = None if valid is None else valid.ravel()
        k, n = len(self.values), flat.size // 64 + 1  # a spare word: position ``size``
        words = _scratch("words", (k, n), np.dtype("<u8"))
        words[:, -1] = 0
        as_bytes = words.view(np.uint8)
        flags = _scratch("flags", (flat.size,), np.dtype(bool))  # one buffer: no page faults
        for i, v in enumerate(self.values):
            np.equal(flat, v, out=flags)
            if ok is not None:
                flags &= ok
            packed = np.packbits(flags, bitorder="little")
            as_bytes[i, : len(packed)] = packed
        self.words = words
        self.before = _scratch("before", (k, n + 1), np.dtype(np.int32))
        self.before[:, 0] = 0
        counts = _scratch("counts", words.shape, np.dtype(np.uint8))
        np.cumsum(_popcount(words, counts), axis=1, out=self.before[:, 1:])

    def __call__(self, pos: np.ndarray) -> np.ndarray:
        """Pixels of each value among the block's first ``pos`` (flat positions): ``(values,
        len(pos))``."""
        word = pos >> 6
        low = (np.uint64(1) << (pos & 63).astype(np.uint64)) - np.uint64(1)
        return self.before[:, word] + _popcount(self.words[:, word] & low)

    def row_counts(self) -> np.ndarray:
        """Pixels of each value in each row of the block: ``(values, rows)``."""
        h, w = self.shape
        return np.diff(self(np.arange(h + 1, dtype=np.int64) * w), axis=1)

    def after(self, row_end: np.ndarray, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Pixels of each value from flat positions ``pos`` to the end of their ``rows``
        (``row_end``: :meth:`__call__` at each row's end), ``(values, len(pos))``, in this
        thread's buffers (valid until the next call)."""
        k, n = len(self.values), len(pos)
        word = pos >> 6
        low = (np.uint64(1) << (pos & 63).astype(np.uint64)) - np.uint64(1)
        bits = _scratch("q_words", (k, n), np.dtype("<u8"))
        np.take(self.words, word, axis=1, out=bits, mode="clip")
        np.bitwise_and(bits, low, out=bits)
        out = _scratch("q_after", (k, n), np.dtype(np.int32))
        np.take(row_end, rows, axis=1, out=out, mode="clip")
        out -= _popcount(bits, _scratch("q_bits", (k, n), np.dtype(np.uint8)))
        out -= np.take(
            self.before,
            word,
            axis=1,
            out=_scratch("q_before", (k, n), np.dtype(np.int32)),
            mode="clip",
        )
        return out

    def table(self, per_value: np.ndarray) -> np.ndarray:
        """``(values, n)`` as ``(n, classes)`` by class value (negative values dropped)."""
        size = max([v for v in self.values if v >= 0], default=0) + 1
        out = np.zeros((per_value.shape[1], size))
        for k, v in enumerate(self.values):
            if v >= 0:
                out[:, v] = per_value[k]
        return out


#: Edge pieces counted at a time: their arrays stay small enough for the allocator to reuse
#: (one block's pieces at once, about 50,000, made a few MB of new arrays a block, each page of
#: them a fault of about 5 µs on a virtual machine).
PIECES_AT_ONCE = 8192


def _count_zones(
    task: StatsTask,
    row_off: int,
    e: np.ndarray,
    edge_zones: np.ndarray,
    data: np.ndarray,
    valid: np.ndarray | None,
    areas: np.ndarray,
    prefix: _ClassPrefix,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and m² by (zone, value): ``(zone ids, pixels, m²)``.

    The zones' edges cut into pieces in the block's pixels (:func:`~geoseg.results.coverage.
    pieces`): a zone covers a pixel by the sum of the heights of its pieces left of it in the
    row, and by the part right of a piece in the piece's own pixel. So each piece counts its
    height times the pixels of each class after it in its row (two prefix counts), and its own
    pixel's part for that pixel's class: no coverage grid, no pass over the pixels per zone, and
    overlapping zones cost nothing more. A border two zones share counts for both, negated for
    the second.
    """
    from geoseg.results.coverage import Edges

    h, w = data.shape
    zone_ids = np.unique(edge_zones[edge_zones >= 0])
    count = len(zone_ids)
    local = np.searchsorted(zone_ids, edge_zones)
    local[edge_zones < 0] = count  # a spare last zone for the edges no neighbour shares
    edges = Edges(
        e[:, 0] - task.col_off,
        e[:, 1] - row_off,
        e[:, 2] - task.col_off,
        e[:, 3] - row_off,
        local[:, 0],
    )
    row_end = prefix(np.arange(1, h + 1, dtype=np.int64) * w)
    # the edges in goes of about PIECES_AT_ONCE pieces (one a row of the block, most of them)
    rows = np.clip(np.ceil(np.maximum(edges.y0, edges.y1)), 0, h) - np.clip(
        np.floor(np.minimum(edges.y0, edges.y1)), 0, h
    )
    go = (np.cumsum(rows) // PIECES_AT_ONCE).astype(np.int64)
    cuts = np.flatnonzero(np.diff(go)) + 1
    size = 1
    pixels = area = np.zeros((count, 1))
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(edges)]):
        got = _count_pieces(
            edges.take(slice(a, b)),
            local[a:b, 1],
            count,
            data,
            valid,
            areas,
            prefix,
            row_end,
            task.nodata,
        )
        if got[0].shape[1] > size:
            size = got[0].shape[1]
            pixels = np.pad(pixels, ((0, 0), (0, size - pixels.shape[1])))
            area = np.pad(area, ((0, 0), (0, size - area.shape[1])))
        pixels[:, : got[0].shape[1]] += got[0]
        area[:, : got[1].shape[1]] += got[1]
    return zone_ids, pixels, area


def _count_pieces(
    edges: Any,
    other: np.ndarray,
    count: int,
    data: np.ndarray,
    valid: np.ndarray | None,
    areas: np.ndarray,
    prefix: _ClassPrefix,
    row_end: np.ndarray,
    nodata: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_count_zones` for some of the block's edges, numbered ``0 .. count - 1`` (their
    ``zone`` and ``other``, ``count`` for none): ``(pixels, m²)``, ``count`` rows each."""
    from geoseg.results.coverage import pieces

    h, w = data.shape
    p = pieces(edges, h, w)
    zone, neighbour = edges.zone[p.edge], other[p.edge]
    bins = count + 1
    same_area = bool(np.all(areas == areas[0]))
    weights = [p.dy] if same_area else [p.dy, p.dy * areas[p.row]]
    # whole pixels after each piece in its row, by value: (values, pieces), summed by zone
    row_start = p.row * w
    after = prefix.after(row_end, p.row, row_start + p.col + 1)
    k = len(prefix.values)
    slot = np.arange(k)[:, None]
    mine = (zone * k + slot).ravel()
    theirs = (neighbour * k + slot).ravel()
    weighted = _scratch("weighted", after.shape, np.dtype(np.float64))
    sums = []
    for weight in weights:
        flat = np.multiply(after, weight, out=weighted).ravel()
        got = np.bincount(mine, flat, bins * k) - np.bincount(theirs, flat, bins * k)
        sums.append(prefix.table(got.reshape(bins, k)[:count].T))
    # each piece's own pixel: the part right of it, for that pixel's value
    own = np.flatnonzero(p.col >= 0)
    at = row_start[own] + p.col[own]
    value = data.ravel()[at].astype(np.int64)
    keep = value >= 0
    if valid is not None:
        keep &= valid.ravel()[at]
    if nodata is not None:
        keep &= value != nodata
    size = max(sums[0].shape[1], int(value[keep].max()) + 1 if keep.any() else 1)
    value = value[keep]
    mine_cell = zone[own][keep] * size + value
    theirs_cell = neighbour[own][keep] * size + value
    part = p.right[own][keep]
    out = []
    for i, s in enumerate(sums):
        wpart = part if i == 0 else part * areas[p.row[own][keep]]
        # (a bincount of nothing is of integers, whatever the weights)
        cells: np.ndarray = np.bincount(mine_cell, wpart, bins * size) - np.bincount(
            theirs_cell, wpart, bins * size
        )
        total = cells.astype(np.float64).reshape(bins, size)[:count]
        total[:, : s.shape[1]] += s
        out.append(total)
    if same_area:
        return out[0], out[0] * areas[0]
    return out[0], out[1]


@dataclass
class Zones:
    """Zones read from a vector file: their keys, geometries (WKB, own CRS) and CRS."""

    path: str
    field: str
    keys: list[Any]
    wkb: np.ndarray
    crs_wkt: str
    layer: str | None = None


def read_zones(path: str | os.PathLike[str], zone_field: str | None) -> Zones:
    """Read a zones file; one line for a missing file, a missing CRS or an unknown field (the
    fields it has are listed). Without ``zone_field`` zones are keyed by their feature id."""
    import pyogrio
    from pyogrio.errors import DataSourceError

    path = str(path)
    if "://" not in path and not path.startswith("/vsi") and not os.path.exists(path):
        raise ResultsError(f"zones file not found: {path}; check the path")
    try:
        info = pyogrio.read_info(path)
    except (DataSourceError, OSError) as exc:
        raise ResultsError(
            f"cannot read zones {path}: {first_line(exc)}; give a GeoPackage, "
            "GeoJSON, Shapefile or another OGR vector file"
        ) from None
    fields = [str(f) for f in info["fields"]]
    if not info.get("crs"):
        raise ResultsError(
            f"zones {path} have no CRS; assign one (ogr2ogr -a_srs EPSG:XXXX) so they "
            "can be matched with the raster"
        )
    if zone_field is not None and zone_field not in fields:
        raise ResultsError(
            f"zones {path} have no field {zone_field!r}; their fields are: "
            + (", ".join(fields) or "(none)")
        )
    if info.get("geometry_type") and "polygon" not in str(info["geometry_type"]).lower():
        raise ResultsError(
            f"zones {path} hold {info['geometry_type']} geometries; zones must be polygons"
        )
    meta, fids, wkb, data = pyogrio.raw.read(
        path, columns=[zone_field] if zone_field else [], return_fids=True
    )
    from pyproj import CRS as ProjCRS

    keys = list(data[0]) if zone_field else [int(f) for f in fids]
    crs_wkt = ProjCRS.from_user_input(meta["crs"]).to_wkt()
    return Zones(
        path,
        zone_field or "zone",
        [k.item() if hasattr(k, "item") else k for k in keys],
        wkb,
        crs_wkt,
    )


@dataclass
class StatsResult:
    """The table (one dict per row, :data:`COLUMNS` and the zone's key) and what was written."""

    rows: list[dict[str, Any]]
    output: Path | None = None
    zone_field: str | None = None
    valid_area_m2: float = 0.0
    seconds: float = 0.0
    classes: dict[int, ClassInfo] = field(default_factory=dict)
    zones: int = 0

    def totals(self) -> dict[int, dict[str, Any]]:
        """Per class over every row: ``{value: {"class_name", "color", "pixels", "area_m2"}}``
        (``color``: ``#rrggbb``, None for values without a class)."""
        out: dict[int, dict[str, Any]] = {}
        for r in self.rows:
            c = self.classes.get(r["class"])
            colour = "#%02x%02x%02x" % tuple(c.color) if c is not None else None
            t = out.setdefault(
                r["class"],
                {"class_name": r["class_name"], "color": colour, "pixels": 0, "area_m2": 0.0},
            )
            t["pixels"] += r["pixels"]
            t["area_m2"] += r["area_m2"]
        return out


def _block_size(src: Any) -> int:
    """Blocks of about :data:`BLOCK` pixels, aligned to the raster's own tiling."""
    bh, bw = src.block_shapes[0]
    base = max(bh, bw) if bh == bw and bh > 1 else 256
    return max(base, BLOCK // base * base)


@dataclass
class ZoneEdges:
    """The zones' edges in the raster's pixels (:class:`~geoseg.results.coverage.Edges`: x =
    column, y = row; a border two zones share once, ``other``: the neighbour, -1 for none),
    with each edge's extent and each zone's bounds, to pick a block's edges."""

    edges: Any
    other: np.ndarray
    bounds: np.ndarray
    ymin: np.ndarray
    ymax: np.ndarray
    xmin: np.ndarray
    geoms: np.ndarray

    def in_block(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``(edges, zones)`` a block needs: the edges, within its rows and not right of it,
        of the zones that reach into it, and the zone and neighbour of each (a neighbour that
        does not reach into the block left out: its other edges are not there; None when no
        zone reaches into it)."""
        import shapely

        b = self.bounds
        near = np.flatnonzero(
            (b[:, 0] < c0 + w) & (b[:, 2] > c0) & (b[:, 1] < r0 + h) & (b[:, 3] > r0)
        )
        if len(near) == 0:
            return None
        hit = np.zeros(len(b) + 1, dtype=bool)  # a spare last: the neighbour -1 reaches nowhere
        hit[near[shapely.intersects(self.geoms[near], shapely.box(c0, r0, c0 + w, r0 + h))]] = True
        e = self.edges
        pick = (hit[e.zone] | hit[self.other]) & (self.ymax > r0) & (self.ymin < r0 + h)
        pick &= self.xmin < c0 + w
        if not pick.any():
            return None
        zone, other = e.zone[pick], self.other[pick]
        xy = np.column_stack([e.x0[pick], e.y0[pick], e.x1[pick], e.y1[pick]])
        # an edge whose zone does not reach into the block: its neighbour's, the other way round
        turn = ~hit[zone]
        xy[turn] = xy[turn][:, [2, 3, 0, 1]]
        zone = np.where(turn, other, zone)
        other = np.where(turn | ~hit[other], -1, other)
        return xy, np.column_stack([zone, other])


def _zone_edges(zones: Zones, crs: Any, transform: Any, width: int, height: int) -> ZoneEdges:
    """The zones reprojected into the raster's CRS and then into pixel coordinates (x = column,
    y = row), as edges; one line when none overlaps the raster."""
    import shapely
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    from geoseg.results.coverage import polygon_edges, shared_edges

    geoms = shapely.from_wkb(zones.wkb)
    src_crs = ProjCRS.from_wkt(zones.crs_wkt)
    if not src_crs.equals(ProjCRS.from_wkt(crs.to_wkt())):
        tr = Transformer.from_crs(src_crs, ProjCRS.from_wkt(crs.to_wkt()), always_xy=True)

        def reproject(xy: np.ndarray) -> np.ndarray:
            x, y = tr.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        geoms = shapely.transform(geoms, reproject)
    inv = ~transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        col = inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c
        row = inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f
        return np.column_stack([col, row])

    pixel = shapely.make_valid(shapely.transform(geoms, to_pixels))
    extent = shapely.box(0, 0, width, height)
    if not shapely.intersects(pixel, extent).any():
        raise ResultsError(
            f"no zone of {zones.path} overlaps the raster; check that they cover the "
            "same area (and their CRS)"
        )
    edges = polygon_edges(pixel, np.arange(len(pixel)))
    keep, other = shared_edges(edges)
    edges = edges.take(keep)
    shapely.prepare(pixel)
    return ZoneEdges(
        edges,
        other[keep],
        shapely.bounds(pixel),
        np.minimum(edges.y0, edges.y1),
        np.maximum(edges.y0, edges.y1),
        np.minimum(edges.x0, edges.x1),
        pixel,
    )


def _validity(src: Any) -> tuple[int | None, bool, int]:
    """How a block of the open raster ``src`` tells valid pixels: ``(nodata value, whether to
    read the mask)``, and the height of the raster's own blocks. A nodata mask needs no second
    read: the pixels holding that value are the invalid ones."""
    from rasterio.enums import MaskFlags

    flags = src.mask_flag_enums[0]
    nodata = src.nodata
    tile_rows = int(src.block_shapes[0][0])
    if MaskFlags.all_valid in flags:
        return None, False, tile_rows
    if MaskFlags.nodata in flags and nodata is not None and float(nodata).is_integer():
        return int(nodata), False, tile_rows
    return None, True, tile_rows


def plan_stats(
    raster: str,
    zones: Zones | None,
    block: int,
    values: tuple[int, ...] = (),
    info: Any = None,
    validity: tuple[int | None, bool, int] | None = None,
) -> tuple[list[StatsTask], Any]:
    """Block tasks over the raster, each with the edges of the zones that reach into it
    (``info``: its :func:`~geoseg.raster.read.open_scene`, ``validity``: its
    :func:`_validity`, when the caller has them)."""
    info = info or open_scene(raster)
    assert info.crs is not None  # checked by stats()
    if validity is None:
        with no_georef_warning(), rasterio.open(raster) as src:
            validity = _validity(src)
    nodata, masked, tile_rows = validity
    # strips of whole rows of the raster's blocks, about STRIP_PIXELS each (none below one)
    strip = max(1, STRIP_PIXELS // max(1, min(block, info.width)) // tile_rows) * tile_rows
    base = dict(
        raster=raster,
        crs_wkt=info.crs.to_wkt(),
        transform=tuple(info.transform)[:6],
        raster_height=info.height,
        nodata=nodata,
        masked=masked,
        values=values,
        strip=strip,
    )
    zone_edges = None
    if zones is not None:
        zone_edges = _zone_edges(zones, info.crs, info.transform, info.width, info.height)
    tasks = []
    for r0 in range(0, info.height, block):
        for c0 in range(0, info.width, block):
            h, w = min(block, info.height - r0), min(block, info.width - c0)
            if zone_edges is None:
                tasks.append(StatsTask(row_off=r0, col_off=c0, height=h, width=w, **base))
                continue
            picked = zone_edges.in_block(r0, c0, h, w)
            if picked is None:
                continue
            tasks.append(
                StatsTask(
                    row_off=r0,
                    col_off=c0,
                    height=h,
                    width=w,
                    edges=picked[0],
                    edge_zones=picked[1],
                    **base,
                )
            )
    return tasks, info


def stats(
    classes: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    zones: str | os.PathLike[str] | None = None,
    zone_field: str | None = None,
    overwrite: bool = False,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    quiet: bool = True,
    max_in_flight: int | TaskSlots | None = None,
) -> StatsResult:
    """Pixels, m², ha and share of each class of a class raster, per zone when ``zones`` (a
    polygon file in any CRS) are given, written to ``output`` (.csv, .parquet or .gpkg: the
    zones with one ``<class_name>_m2`` column per class) when given.

    Areas are true areas (:func:`geoseg.results.areas.row_areas`); ``share`` is of the zone's
    (or the raster's) valid area. Block by block on the Dask cluster (``client``, ``scheduler``,
    ``workers`` local processes, else threads in this process: see
    :func:`~geoseg.results.blocks.block_session`), at most ``max_in_flight`` blocks at a time.
    """
    from geoseg.dask.stream import stream
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    raster = str(classes)
    out = None
    if output is not None:
        out = check_table_path(output, overwrite, "stats output", STATS_FORMATS)
        if out.suffix.lower() == ".gpkg" and zones is None:
            raise ResultsError(
                f"a GeoPackage stats output ({out.name}) holds zones; give --zones, "
                "or write .csv or .parquet"
            )
        check_distinct_paths({"class raster": raster, "zones": zones}, {"stats output": out})
    info = open_scene(raster)
    with no_georef_warning(), rasterio.open(raster) as src:
        class_map, _ = raster_class_info(src, raster)
        block = block_size or _block_size(src)
        validity = _validity(src)
    if info.crs is None or not info.georeferenced:
        raise ResultsError(
            f"{raster} has no CRS or geotransform, so its pixels have no area; "
            "assign them first (gdal_edit.py -a_srs EPSG:XXXX -a_ullr ...)"
        )
    row_areas(info.crs, info.transform, info.height, 0, 1)  # a rotated geographic grid fails here
    zone_set = read_zones(zones, zone_field) if zones is not None else None
    tasks, _ = plan_stats(raster, zone_set, block, tuple(sorted(class_map)), info, validity)
    sums: dict[tuple[int, int], list[float]] = {}
    progress = Progress(len(tasks), unit="blocks", quiet=quiet)
    from dask.base import tokenize

    from geoseg.raster.scenes import file_token

    stat = file_token(raster)
    with block_session(client, scheduler, workers, max_in_flight) as (session, limit):
        for _, res in stream(
            session.client,
            count_block,
            tasks,
            limit,
            key=lambda t, i: f"geoseg-stats-{tokenize(t, stat)}",
        ):
            progress.update(1)
            for z, v, p, a in zip(
                res.zone.tolist(), res.value.tolist(), res.pixels.tolist(), res.area.tolist()
            ):
                s = sums.setdefault((z, v), [0.0, 0.0])
                s[0] += p
                s[1] += a
    progress.close()
    result = _table(sums, class_map, zone_set)
    result.classes = class_map
    if zone_set is not None:
        result.zones = len(zone_set.keys)
    if out is not None:
        if out.suffix.lower() == ".gpkg":
            assert zone_set is not None
            _write_zones_gpkg(out, zone_set, result, class_map)
        else:
            columns = ([result.zone_field] if result.zone_field else []) + list(COLUMNS)
            publish(stage_table(out, result.rows, columns), out)
    result.output = out
    result.seconds = time.perf_counter() - t0
    return result


def _table(
    sums: dict[tuple[int, int], list[float]], class_map: dict[int, ClassInfo], zones: Zones | None
) -> StatsResult:
    """Rows per zone (in the file's order) and class (every named class, then other values)."""
    values = sorted(set(class_map) | {v for _, v in sums})
    zone_ids = range(len(zones.keys)) if zones is not None else [-1]
    rows: list[dict[str, Any]] = []
    valid_total = 0.0
    for z in zone_ids:
        valid = sum(sums.get((z, v), [0.0, 0.0])[1] for v in values)
        valid_total += valid
        for v in values:
            p, a = sums.get((z, v), [0.0, 0.0])
            row: dict[str, Any] = {
                "class": v,
                "class_name": name_of(class_map, v),
                "pixels": int(round(p)) if zones is None else p,
                "area_m2": a,
                "area_ha": a / 1e4,
                "share": a / valid if valid else 0.0,
            }
            if zones is not None:
                row = {zones.field: zones.keys[z], **row}
            rows.append(row)
    return StatsResult(
        rows, zone_field=zones.field if zones is not None else None, valid_area_m2=valid_total
    )


def class_column(name: str) -> str:
    """The GeoPackage column of a class's area: its name, lower case, ``_m2`` added."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_") or "class"
    return f"{safe}_m2"


def _write_zones_gpkg(
    out: Path, zones: Zones, result: StatsResult, class_map: dict[int, ClassInfo]
) -> None:
    """The zones with their own geometry and key, one ``<class>_m2`` column per class and
    ``valid_m2``, staged and renamed onto ``out``."""
    import pyogrio

    from geoseg.fs import remove_quietly, temporary_sibling

    values = sorted({r["class"] for r in result.rows})
    names = {v: class_column(name_of(class_map, v)) for v in values}
    n = len(zones.keys)
    cols = {names[v]: np.zeros(n) for v in values}
    index = {k: i for i, k in enumerate(zones.keys)}
    for r in result.rows:
        cols[names[r["class"]]][index[r[zones.field]]] += r["area_m2"]
    valid = np.sum(list(cols.values()), axis=0) if cols else np.zeros(n)
    keys = np.asarray(zones.keys)
    tmp = temporary_sibling(out, ".gpkg")
    os.unlink(tmp)  # the GPKG driver creates the file itself
    try:
        pyogrio.raw.write(
            str(tmp),
            zones.wkb,
            [keys, *cols.values(), valid],
            [zones.field, *cols.keys(), "valid_m2"],
            crs=zones.crs_wkt,
            geometry_type="Unknown",
            driver="GPKG",
            layer=out.stem,
            promote_to_multi=False,
        )
        publish(tmp, out)
    except BaseException:
        remove_quietly(tmp)
        raise


def class_areas(
    raster: str | os.PathLike[str], client: Any = None, max_in_flight: int | TaskSlots | None = None
) -> dict[int, dict[str, Any]]:
    """Per class of a whole class raster: ``{value: {"class_name", "pixels", "area_m2"}}``
    (for STAC items, quicklook legends and job reports)."""
    return stats(raster, client=client, max_in_flight=max_in_flight).totals()
