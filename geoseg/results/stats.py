"""Class areas of a class raster, in all and per zone, counted block by block on Dask.

Each block task reads its window of the raster (a path and a window, with the zones' parts
inside it) and returns, per (zone, class), the pixels and square metres it holds; the client
sums them. Without zones the pixel counts are integers (a bincount); with zones a pixel counts
for a zone by the fraction of it the zone covers, computed exactly in numpy
(:mod:`geoseg.results.coverage`; see docs/results.md for the measurement against centre-of-pixel
rasterization).
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
from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import no_georef_warning, open_scene, read_env
from geoseg.results.areas import row_areas
from geoseg.results.classes import name_of, raster_class_info
from geoseg.results.tables import check_table_path, publish, stage_table

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots

#: Output formats of ``geoseg stats`` by extension.
STATS_FORMATS = (".csv", ".parquet", ".gpkg")
#: Columns of the stats table (``zone`` is named after the zone field, and only there with zones).
COLUMNS = ("class", "class_name", "pixels", "area_m2", "area_ha", "share")
#: Side of a block task in pixels (a multiple of the raster's own blocks, see :func:`_block_size`).
BLOCK = 2048


@dataclass(frozen=True)
class StatsTask:
    """One block of the class raster and the zones' parts inside it (WKB in pixel coordinates:
    x = column, y = -row); paths, windows and small geometries only. Pixels are invalid where
    they hold ``nodata``, or where the raster's mask says so when ``masked``; ``values``: the
    classes its metadata names (the values to expect)."""

    raster: str
    row_off: int
    col_off: int
    height: int
    width: int
    crs_wkt: str
    transform: tuple[float, ...]
    raster_height: int
    zone_ids: tuple[int, ...] = ()
    zones: tuple[bytes, ...] = ()
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
    """Count one block: the valid pixels by value, weighted by each row's pixel area, and with
    zones each pixel weighted by the fraction of it the zone covers."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    window = Window(task.col_off, task.row_off, task.width, task.height)
    with read_env(task.raster, READ_CACHE_BYTES), no_georef_warning():
        src = _open_raster(task.raster)
        data = src.read(1, window=window)
        # an internal mask or alpha: kept apart, so the values keep their own small type
        valid = src.read_masks(1, window=window) > 0 if task.masked else None
    areas = row_areas(
        CRS.from_wkt(task.crs_wkt),
        Affine(*task.transform),
        task.raster_height,
        task.row_off,
        task.height,
    )
    if not task.zones and valid is None and bool(np.all(areas == areas[0])):
        found = _count_known(data, task.values, task.nodata)
        if found is not None:
            pixels = found[None, :].astype(np.float64)
            return _block_counts(np.full(1, -1, np.int64), pixels, pixels * areas[0])
    if not task.zones:  # each row one run of the one zone -1
        h, w = data.shape
        runs = Runs(
            np.zeros(h, np.int64),
            np.arange(h, dtype=np.int64),
            np.zeros(h, np.int64),
            np.full(h, w, np.int64),
            np.ones(h),
        )
        pixels, area = _count_runs(data, valid, runs, 1, task, areas)
        return _block_counts(np.full(1, -1, np.int64), pixels, area)
    zone_ids, pixels, area = _count_zones(task, data, valid, areas)
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
    for v in wanted:
        counts[v] = np.count_nonzero(data == v)
    if counts.sum() != data.size:
        return None
    if nodata is not None:
        counts[nodata] = 0
    return counts


@dataclass
class Runs:
    """Runs ``[start, stop)`` of a block's rows, each counted for ``label`` with a weight
    (the covered fraction of its pixels)."""

    label: np.ndarray
    row: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    weight: np.ndarray


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words)
    return np.unpackbits(words.view(np.uint8)).reshape(-1, 64).sum(axis=1)  # pragma: no cover


class _BitPrefix:
    """How many pixels of a boolean block are set before any flat position, from its bits
    packed 64 to a word (numpy compares, packs and counts in SIMD: about 0.2 ns a pixel)."""

    def __init__(self, flags: np.ndarray) -> None:
        packed = np.packbits(flags.ravel(), bitorder="little")
        padded = np.zeros(
            len(packed) + (-len(packed)) % 8 + 8, np.uint8
        )  # a spare word: position n
        padded[: len(packed)] = packed
        self.words = padded.view("<u8")
        self.before = np.zeros(len(self.words) + 1, np.int64)
        np.cumsum(_popcount(self.words), out=self.before[1:])

    def __call__(self, pos: np.ndarray) -> np.ndarray:
        """Set pixels among the block's first ``pos`` (flat positions)."""
        word = pos >> 6
        low = (np.uint64(1) << (pos & 63).astype(np.uint64)) - np.uint64(1)
        return self.before[word] + _popcount(self.words[word] & low).astype(np.int64)

    @property
    def total(self) -> int:
        """Set pixels in the whole block."""
        return int(self.before[-1])


def _count_runs(
    data: np.ndarray,
    valid: np.ndarray | None,
    runs: Runs,
    count: int,
    task: StatsTask,
    areas: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and m² by (label, value) of the runs of a block, as two ``(count, values)`` arrays.

    Value by value: the pixels holding it as bits (:class:`_BitPrefix`), counted within each
    run by the difference of two prefix counts, so there is no pass over the pixels per zone
    and overlapping zones cost nothing more. The raster's class values first; a block that
    holds others (a raster without class metadata) has them found by a bincount.
    """
    w = data.shape[1]
    begin = runs.row * w + runs.start
    end = runs.row * w + runs.stop
    run_area = areas[runs.row]
    info = np.iinfo(data.dtype)
    values = [v for v in task.values if v != task.nodata and info.min <= v <= info.max]
    invalid = 0 if valid is None else data.size - int(np.count_nonzero(valid))
    if task.nodata is not None and info.min <= task.nodata <= info.max:
        nodata = data == task.nodata
        invalid += int(np.count_nonzero(nodata if valid is None else nodata & valid))
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    seen, i = 0, 0
    while True:
        if i == len(values):
            if seen + invalid == data.size:
                break
            found = np.bincount(
                (data if valid is None else data[valid]).ravel().astype(np.int64) - int(info.min)
            )
            values += [
                int(v) + int(info.min)
                for v in np.flatnonzero(found)
                if int(v) + int(info.min) not in out and int(v) + int(info.min) != task.nodata
            ]
            if i == len(values):  # pragma: no cover - the bincount finds every value
                break
        v = values[i]
        i += 1
        flags = data == v
        if valid is not None:
            flags &= valid
        prefix = _BitPrefix(flags)
        seen += prefix.total
        got = (prefix(end) - prefix(begin)) * runs.weight
        out[v] = (
            np.bincount(runs.label, weights=got, minlength=count),
            np.bincount(runs.label, weights=got * run_area, minlength=count),
        )
    size = max(out) + 1 if out else 1
    pixels, area = np.zeros((count, size)), np.zeros((count, size))
    for v, (p, a) in out.items():
        if v >= 0:  # negative values of a signed raster are not classes
            pixels[:, v], area[:, v] = p, a
    return pixels, area


def _count_zones(
    task: StatsTask, data: np.ndarray, valid: np.ndarray | None, areas: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and m² by (zone, value): the zones' exact coverage of the block
    (:func:`geoseg.results.coverage.coverage`), its runs counted by :func:`_count_runs` and
    its edge cells weighted by their fractions; ``(zone ids, pixels, m²)``."""
    import shapely

    from geoseg.results.coverage import coverage

    h, w = data.shape
    geoms = shapely.from_wkb(np.asarray(task.zones, dtype=object))
    cov = coverage(
        geoms,
        np.asarray(task.zone_ids, dtype=np.int64),
        h,
        w,
        col_off=task.col_off,
        row_off=task.row_off,
        flip_y=True,
    )
    zone_ids, local = np.unique(np.concatenate([cov.run_zone, cov.cell_zone]), return_inverse=True)
    run_label, cell_label = local[: len(cov.run_zone)], local[len(cov.run_zone) :]
    count = len(zone_ids)
    runs = Runs(run_label, cov.run_row, cov.run_start, cov.run_stop, cov.run_fraction)
    run_pixels, run_area = _count_runs(data, valid, runs, count, task, areas)
    # edge cells: their value, weighted by the covered fraction
    value = data[cov.cell_row, cov.cell_col].astype(np.int64)
    keep = value >= 0
    if valid is not None:
        keep &= valid[cov.cell_row, cov.cell_col]
    if task.nodata is not None:
        keep &= value != task.nodata
    size = max(run_pixels.shape[1], int(value[keep].max()) + 1 if keep.any() else 1)
    pixels, area = np.zeros((count, size)), np.zeros((count, size))
    pixels[:, : run_pixels.shape[1]] += run_pixels
    area[:, : run_area.shape[1]] += run_area
    key = cell_label[keep] * size + value[keep]
    frac = cov.cell_fraction[keep]
    pixels += np.bincount(key, weights=frac, minlength=count * size).reshape(count, size)
    area += np.bincount(
        key, weights=frac * areas[cov.cell_row[keep]], minlength=count * size
    ).reshape(count, size)
    return zone_ids, pixels, area


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


def _pixel_zones(
    zones: Zones, crs: Any, transform: Any, width: int, height: int
) -> tuple[np.ndarray, Any]:
    """The zones reprojected into the raster's CRS and then into pixel coordinates (x = column,
    y = -row), and an STRtree over them; one line when none overlaps the raster."""
    import shapely
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

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
        return np.column_stack([col, -row])

    pixel = shapely.make_valid(shapely.transform(geoms, to_pixels))
    extent = shapely.box(0, -height, width, 0)
    if not shapely.intersects(pixel, extent).any():
        raise ResultsError(
            f"no zone of {zones.path} overlaps the raster; check that they cover the "
            "same area (and their CRS)"
        )
    return pixel, shapely.STRtree(pixel)


def _validity(raster: str) -> tuple[int | None, bool]:
    """How a block tells valid pixels: ``(nodata value, whether to read the mask)``. A nodata
    mask needs no second read: the pixels holding that value are the invalid ones."""
    from rasterio.enums import MaskFlags

    with no_georef_warning(), rasterio.open(raster) as src:
        flags = src.mask_flag_enums[0]
        nodata = src.nodata
    if MaskFlags.all_valid in flags:
        return None, False
    if MaskFlags.nodata in flags and nodata is not None and float(nodata).is_integer():
        return int(nodata), False
    return None, True


def plan_stats(
    raster: str, zones: Zones | None, block: int, values: tuple[int, ...] = ()
) -> tuple[list[StatsTask], Any]:
    """Block tasks over the raster, each with the zones' parts inside its window."""
    import shapely

    info = open_scene(raster)
    assert info.crs is not None  # checked by stats()
    nodata, masked = _validity(raster)
    base = dict(
        raster=raster,
        crs_wkt=info.crs.to_wkt(),
        transform=tuple(info.transform)[:6],
        raster_height=info.height,
        nodata=nodata,
        masked=masked,
        values=values,
    )
    pixel = tree = None
    if zones is not None:
        pixel, tree = _pixel_zones(zones, info.crs, info.transform, info.width, info.height)
    tasks = []
    for r0 in range(0, info.height, block):
        for c0 in range(0, info.width, block):
            h, w = min(block, info.height - r0), min(block, info.width - c0)
            if tree is None:
                tasks.append(StatsTask(row_off=r0, col_off=c0, height=h, width=w, **base))
                continue
            assert pixel is not None
            hits = tree.query(shapely.box(c0, -(r0 + h), c0 + w, -r0), predicate="intersects")
            if len(hits) == 0:
                continue
            hits = np.sort(hits)
            parts = shapely.clip_by_rect(pixel[hits], c0, -(r0 + h), c0 + w, -r0)
            keep = ~shapely.is_empty(parts)
            if not keep.any():
                continue
            tasks.append(
                StatsTask(
                    row_off=r0,
                    col_off=c0,
                    height=h,
                    width=w,
                    zone_ids=tuple(int(i) for i in hits[keep]),
                    zones=tuple(shapely.to_wkb(parts[keep])),
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
    (or the raster's) valid area. Block by block on the Dask cluster (``client``, ``scheduler``
    or ``workers`` local processes), at most ``max_in_flight`` blocks at a time.
    """
    from geoseg.dask.session import cpu_count, dask_session
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
    if info.crs is None or not info.georeferenced:
        raise ResultsError(
            f"{raster} has no CRS or geotransform, so its pixels have no area; "
            "assign them first (gdal_edit.py -a_srs EPSG:XXXX -a_ullr ...)"
        )
    row_areas(info.crs, info.transform, info.height, 0, 1)  # a rotated geographic grid fails here
    zone_set = read_zones(zones, zone_field) if zones is not None else None
    tasks, _ = plan_stats(raster, zone_set, block, tuple(sorted(class_map)))
    sums: dict[tuple[int, int], list[float]] = {}
    progress = Progress(len(tasks), unit="blocks", quiet=quiet)
    from dask.base import tokenize

    from geoseg.raster.scenes import file_token

    stat = file_token(raster)
    with dask_session(client, scheduler, workers or cpu_count(), processes=True) as session:
        limit = max_in_flight or max(4, 2 * session.threads)
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
