"""Class areas of a class raster, in all and per zone, counted block by block on Dask.

Each block task reads its window of the raster (a path and a window, with the edges of the
zones that reach into it) and returns, per (zone, class), the pixels and square metres it holds;
the client sums them. Without zones the pixel counts are integers; with zones a pixel counts for
a zone by the fraction of it the zone covers, exactly: each zone edge's pieces in the block's
pixels weighted by the pixels of each class at and to the right of them in their row
(:mod:`geoseg.results.coverage`, counted by the compiled kernel of
:mod:`geoseg.results.counting`; see docs/results.md for the measurement against
centre-of-pixel rasterization).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from geoseg.classes import ClassInfo
from geoseg.errors import ResultsError
from geoseg.fs import check_distinct_paths
from geoseg.memory import imports_frozen
from geoseg.raster.read import no_georef_warning, open_scene
from geoseg.results.areas import row_areas
from geoseg.results.blocks import block_session
from geoseg.results.classes import name_of, raster_class_info
from geoseg.results.tables import check_table_path, publish, stage_table

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots

from geoseg.results.counting import BlockCounts, StatsTask, count_block
from geoseg.results.zones import ZoneEdges, Zones, read_zones, zone_edges

#: Output formats of ``geoseg stats`` by extension.
STATS_FORMATS = (".csv", ".parquet", ".gpkg")
#: Columns of the stats table (``zone`` is named after the zone field, and only there with zones).
COLUMNS = ("class", "class_name", "pixels", "area_m2", "area_ha", "share")
#: Sides of a block task in pixels (multiples of the raster's own blocks, see
#: :func:`_block_size`): a task costs an in-process cluster about 3 ms (a 16,384² raster with
#: 1,000 zones in 64 blocks: 0.57 s, in 16: 0.41 s, in 4: 0.36 s), counting 4096² about 25 ms.
BLOCK_MIN, BLOCK_MAX = 2048, 16384
#: Pixels counted at a time within a block (a strip of its rows, read into a buffer each worker
#: thread keeps): fewer, larger strips spend less on each read and kernel call (a 16,384² raster
#: with 1,000 zones on 2 threads: strips of 4, 8 and 32 million pixels 0.19, 0.175 and 0.164 s);
#: 8 MB a thread for uint8.
STRIP_PIXELS = 8 * 1024 * 1024


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


def _block_size(tile: tuple[int, int], height: int, width: int, threads: int) -> int:
    """Square blocks aligned to the raster's own ``tile`` (rows, columns), from
    :data:`BLOCK_MIN` doubled up to :data:`BLOCK_MAX` while the raster still holds two of them
    for each of the cluster's ``threads``: as few tasks as keep every thread busy (memory is
    bounded by the strips a block is counted in, not by its size)."""
    bh, bw = tile
    base = max(bh, bw) if bh == bw and bh > 1 else 256
    side = max(base, BLOCK_MIN // base * base)
    while (
        side * 2 <= BLOCK_MAX and -(-height // (2 * side)) * -(-width // (2 * side)) >= 2 * threads
    ):
        side *= 2
    return side


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
    edges: ZoneEdges | None,
    block: int,
    values: tuple[int, ...] = (),
    info: Any = None,
    validity: tuple[int | None, bool, int] | None = None,
) -> tuple[list[StatsTask], Any]:
    """Block tasks over the raster, each with the ``edges`` of the zones that reach into it
    (:func:`~geoseg.results.zones.zone_edges`; ``info``: the raster's
    :func:`~geoseg.raster.read.open_scene`, ``validity``: its :func:`_validity`, when the
    caller has them)."""
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
    tasks = []
    for r0 in range(0, info.height, block):
        for c0 in range(0, info.width, block):
            h, w = min(block, info.height - r0), min(block, info.width - c0)
            if edges is None:
                tasks.append(StatsTask(row_off=r0, col_off=c0, height=h, width=w, **base))
                continue
            picked = edges.in_block(r0, c0, h, w)
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


@imports_frozen
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
        tile = src.block_shapes[0]
        validity = _validity(src)
    if info.crs is None or not info.georeferenced:
        raise ResultsError(
            f"{raster} has no CRS or geotransform, so its pixels have no area; "
            "assign them first (gdal_edit.py -a_srs EPSG:XXXX -a_ullr ...)"
        )
    row_areas(info.crs, info.transform, info.height, 0, 1)  # a rotated geographic grid fails here
    zone_set = read_zones(zones, zone_field) if zones is not None else None
    edges = None
    if zone_set is not None:
        edges = zone_edges(zone_set, info.crs, info.transform, info.width, info.height)
    from dask.base import tokenize

    from geoseg.raster.scenes import file_token

    parts: list[BlockCounts] = []
    with block_session(client, scheduler, workers, max_in_flight) as (session, limit):
        block = block_size or _block_size(tile, info.height, info.width, session.threads)
        tasks, _ = plan_stats(raster, edges, block, tuple(sorted(class_map)), info, validity)
        progress = Progress(len(tasks), unit="blocks", quiet=quiet)
        # one token for the run (the raster as it is now, the zones, the blocks), the block's
        # number after it: tokenizing each task's edges cost the client 4 ms a block
        run = tokenize(
            raster,
            file_token(raster),
            None if zones is None else (str(zones), file_token(str(zones)), zone_field),
            block,
            tasks[0].strip if tasks else 0,
        )
        for _, res in stream(
            session.client,
            count_block,
            tasks,
            limit,
            key=lambda t, i: f"geoseg-stats-{run}-{i}",
        ):
            progress.update(1)
            parts.append(res)
        progress.close()
    result = _table(parts, class_map, zone_set)
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
    parts: list[BlockCounts], class_map: dict[int, ClassInfo], zones: Zones | None
) -> StatsResult:
    """Rows per zone (in the file's order) and class (every named class, then other values)
    from the blocks' :class:`~geoseg.results.counting.BlockCounts`, summed."""
    zone = np.concatenate([p.zone for p in parts] or [np.zeros(0, np.int64)])
    value = np.concatenate([p.value for p in parts] or [np.zeros(0, np.int64)])
    values = sorted(set(class_map) | set(np.unique(value).tolist()))
    n = len(zones.keys) if zones is not None else 1
    cell = (np.maximum(zone, 0) * len(values) + np.searchsorted(values, value)).astype(np.int64)
    size = n * len(values)

    def summed(name: str) -> np.ndarray:
        weights = np.concatenate([getattr(p, name) for p in parts] or [np.zeros(0)])
        return np.bincount(cell, weights, size).reshape(n, len(values))

    pixels, area = summed("pixels"), summed("area")
    valid = area.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(valid[:, None] > 0, area / valid[:, None], 0.0)
    names = [name_of(class_map, v) for v in values]
    counts: list[list[Any]] = (
        np.rint(pixels).astype(np.int64).tolist() if zones is None else pixels.tolist()
    )
    rows: list[dict[str, Any]] = []
    for z, (pz, az, sz) in enumerate(zip(counts, area.tolist(), share.tolist())):
        head = {zones.field: zones.keys[z]} if zones is not None else {}
        rows += [
            {
                **head,
                "class": v,
                "class_name": name,
                "pixels": p,
                "area_m2": a,
                "area_ha": a / 1e4,
                "share": sh,
            }
            for v, name, p, a, sh in zip(values, names, pz, az, sz)
        ]
    return StatsResult(
        rows,
        zone_field=zones.field if zones is not None else None,
        valid_area_m2=float(valid.sum()),
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
