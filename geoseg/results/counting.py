"""One block task of ``geoseg stats``: a window of the class raster counted per (zone, class),
in strips, from per-class bit prefix counts and the zones' edge pieces (see
:mod:`geoseg.results.stats` for the run and docs/results.md for the method)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.raster.read import no_georef_warning, read_env
from geoseg.results.areas import row_areas

if TYPE_CHECKING:
    pass


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
