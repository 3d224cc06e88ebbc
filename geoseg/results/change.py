"""From-to change between two class rasters: a raster with one value per class pair that occurs,
the transition table in pixels and areas, and optionally polygons of the changes.

Two passes over BEFORE's grid, block by block on Dask: the first counts the class pairs (so the
raster's values, names and colours are known before it is written), the second writes each
block's pair values into a COG. AFTER is matched by class name and, when its grid differs,
read through a nearest-neighbour warp onto BEFORE's grid.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.classes import ClassInfo, class_raster_dtype, class_tags
from geoseg.errors import ResultsError
from geoseg.fs import check_distinct_paths, check_output_path, lock_output_folders
from geoseg.memory import imports_frozen
from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import no_georef_warning, open_scene, read_env
from geoseg.results.areas import row_areas
from geoseg.results.blocks import block_session
from geoseg.results.classes import colour_of, name_of, raster_class_info
from geoseg.results.tables import check_table_path, stage_table

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots

#: Columns of the transition table.
COLUMNS = ("value", "from", "from_name", "to", "to_name", "changed", "pixels", "area_m2", "area_ha")
#: Side of a block task in pixels.
BLOCK = 1024


@dataclass(frozen=True)
class ChangeTask:
    """One block of BEFORE's grid: paths, the window, AFTER's value lookup (AFTER value ->
    BEFORE's value of the same class name) and, in the second pass, the pair codes to write."""

    before: str
    after: str
    row_off: int
    col_off: int
    height: int
    width: int
    lookup: tuple[int, ...]
    modulus: int
    warp: bool
    crs_wkt: str | None
    transform: tuple[float, ...]
    raster_width: int
    raster_height: int
    codes: tuple[int, ...] = ()
    values: tuple[int, ...] = ()
    nodata: int = 255
    dtype: str = "uint8"


def _read_pair(task: ChangeTask) -> tuple[np.ndarray, np.ndarray]:
    """The block's pair codes (before * modulus + after, in BEFORE's class values) and the mask
    of pixels valid in both rasters."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT

    window = Window(task.col_off, task.row_off, task.width, task.height)
    with read_env(task.before, READ_CACHE_BYTES), no_georef_warning():
        with rasterio.open(task.before) as src:
            before = src.read(1, window=window).astype(np.int64)
            valid = src.read_masks(1, window=window) > 0
        with rasterio.open(task.after) as src:
            if task.warp:
                with WarpedVRT(
                    src,
                    crs=CRS.from_wkt(task.crs_wkt) if task.crs_wkt else src.crs,
                    transform=Affine(*task.transform),
                    width=task.raster_width,
                    height=task.raster_height,
                    resampling=Resampling.nearest,
                ) as vrt:
                    after = vrt.read(1, window=window)
                    valid &= vrt.read_masks(1, window=window) > 0
            else:
                after = src.read(1, window=window)
                valid &= src.read_masks(1, window=window) > 0
    mapped = np.asarray(task.lookup, dtype=np.int64)[after]
    valid &= mapped >= 0
    return before * task.modulus + np.where(valid, mapped, 0), valid


@dataclass
class PairCounts:
    """Pixels and m² per pair code in one block."""

    codes: np.ndarray
    pixels: np.ndarray
    area: np.ndarray


def count_pairs(task: ChangeTask) -> PairCounts:
    """First pass: pixels and m² of each class pair in one block."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    codes, valid = _read_pair(task)
    rows, _ = np.nonzero(valid)
    found, index = np.unique(codes[valid], return_inverse=True)
    if task.crs_wkt:
        areas = row_areas(
            CRS.from_wkt(task.crs_wkt),
            Affine(*task.transform),
            task.raster_height,
            task.row_off,
            task.height,
        )
    else:
        areas = np.ones(task.height)  # no CRS: areas in pixels (the table says so)
    return PairCounts(
        found,
        np.bincount(index, minlength=len(found)),
        np.bincount(index, weights=areas[rows], minlength=len(found)),
    )


def change_block(task: ChangeTask) -> tuple[int, int, np.ndarray]:
    """Second pass: the block's change values (nodata where either input is nodata, or unchanged
    with ``changes_only``), with its offsets."""
    codes, valid = _read_pair(task)
    table = np.asarray(task.codes, dtype=np.int64)
    values = np.asarray(task.values, dtype=np.int64)
    out = np.full(codes.shape, task.nodata, dtype=task.dtype)
    pos = np.searchsorted(table, codes[valid])
    out[valid] = values[pos]
    return task.row_off, task.col_off, out


@dataclass
class ChangeResult:
    """The transition table (one dict per class pair, :data:`COLUMNS`) and what was written."""

    rows: list[dict[str, Any]]
    output: Path
    table: Path | None = None
    vector: Path | None = None
    valid_area_m2: float = 0.0
    seconds: float = 0.0
    classes: list[ClassInfo] = field(default_factory=list)


def _lookup(
    before_classes: dict[int, ClassInfo],
    after_classes: dict[int, ClassInfo],
    tagged: bool,
    after_dtype: str,
    before: str,
    after: str,
) -> np.ndarray:
    """AFTER's value -> BEFORE's value of the same class name (-1: no such class); one line
    listing the names that do not match."""
    size = (
        int(np.iinfo(np.dtype(after_dtype)).max) + 1 if np.dtype(after_dtype).itemsize <= 2 else 0
    )
    if size == 0:
        raise ResultsError(f"{after} holds {after_dtype} values; class rasters are uint8 or uint16")
    lookup = np.arange(size, dtype=np.int64)
    if not tagged:
        return lookup
    by_name = {c.name: c.value for c in before_classes.values()}
    names_after = {c.name for c in after_classes.values()}
    only_before = sorted(set(by_name) - names_after)
    only_after = sorted(names_after - set(by_name))
    if only_before or only_after:
        raise ResultsError(
            "the class names do not match: "
            + "; ".join(
                part
                for part in (
                    f"only in {before}: {', '.join(only_before)}" if only_before else "",
                    f"only in {after}: {', '.join(only_after)}" if only_after else "",
                )
                if part
            )
            + "; compare rasters of models with the same classes"
        )
    lookup[:] = -1
    for c in after_classes.values():
        lookup[c.value] = by_name[c.name]
    return lookup


def _same_grid(a: Any, b: Any) -> bool:
    return bool(
        a.crs == b.crs
        and (a.width, a.height) == (b.width, b.height)
        and np.allclose(tuple(a.transform)[:6], tuple(b.transform)[:6], rtol=0, atol=1e-9)
    )


def _check_overlap(before: Any, after: Any, before_path: str, after_path: str) -> None:
    """One line when AFTER does not overlap BEFORE (or one lacks a CRS and the grids differ)."""
    from rasterio.warp import transform_bounds

    if before.crs is None or after.crs is None:
        raise ResultsError(
            f"{before_path} and {after_path} have different grids and "
            f"{after_path if after.crs is None else before_path} has no CRS to match "
            "them by; assign one (gdal_edit.py -a_srs)"
        )
    left, bottom, right, top = transform_bounds(
        after.crs, before.crs, *after.bounds, densify_pts=21
    )
    b = before.bounds
    if right <= b.left or left >= b.right or top <= b.bottom or bottom >= b.top:
        raise ResultsError(
            f"{after_path} does not overlap {before_path}: their grids share no "
            "area; compare rasters of the same place"
        )


def _pale(c: tuple[int, int, int]) -> tuple[int, int, int]:
    """A class colour mixed 65 % with white: unchanged pixels recede behind the changes."""
    return tuple(int(round(v + (255 - v) * 0.65)) for v in c)  # type: ignore[return-value]


@imports_frozen
def change(
    before: str | os.PathLike[str],
    after: str | os.PathLike[str],
    output: str | os.PathLike[str],
    table: str | os.PathLike[str] | None = None,
    changes_only: bool = False,
    vector: str | os.PathLike[str] | None = None,
    vector_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    quiet: bool = True,
    max_in_flight: int | TaskSlots | None = None,
) -> ChangeResult:
    """Compare two class rasters of one place: write a from-to raster on BEFORE's grid (one
    value per class pair that occurs, named ``forest -> farmland``, unchanged pairs kept as
    ``forest (unchanged)`` or, with ``changes_only``, nodata), the transition table (``table``:
    .csv or .parquet) and the changes' polygons (``vector``, as :func:`geoseg.vector.vectorize.vectorize`
    writes them, with ``vector_options``). Classes are matched by name; AFTER is resampled onto
    BEFORE's grid by nearest neighbour when the grids differ."""
    from geoseg.progress import Progress
    from geoseg.raster.sink import RasterSink, open_sinks

    t0 = time.perf_counter()
    before, after = str(before), str(after)
    out = check_output_path(output, overwrite, "change raster")
    table_path = (
        check_table_path(table, overwrite, "transition table") if table is not None else None
    )
    vector_path = None
    if vector is not None:
        from geoseg.vector.vectorize import check_vector_options

        vector_path = check_output_path(vector, overwrite, "vector output")
    check_distinct_paths(
        {"BEFORE raster": before, "AFTER raster": after},
        {"change raster": out, "transition table": table_path, "vector output": vector_path},
    )
    info = open_scene(before)
    if vector_path is not None:
        check_vector_options(vector_path, info.crs, **(vector_options or {}))
    open_scene(after)
    with no_georef_warning(), rasterio.open(before) as b, rasterio.open(after) as a:
        before_classes, tagged_b = raster_class_info(b, before)
        after_classes, tagged_a = raster_class_info(a, after, warn=tagged_b)
        if tagged_b != tagged_a:
            untagged = after if tagged_b else before
            raise ResultsError(
                f"{untagged} has no geoseg class metadata, so its classes cannot be "
                "matched by name; compare two class rasters from 'geoseg predict'"
            )
        lookup = _lookup(before_classes, after_classes, tagged_b, a.dtypes[0], before, after)
        warp = not _same_grid(b, a)
        if warp:
            _check_overlap(b, a, before, after)
        bh, bw = b.block_shapes[0]
        base = bh if bh == bw and bh > 1 else 256
        block = block_size or max(base, BLOCK // base * base)
        top = (
            int(np.iinfo(np.dtype(b.dtypes[0])).max) if np.dtype(b.dtypes[0]).itemsize <= 2 else -1
        )
    if top < 0:
        raise ResultsError(f"{before} holds {info.dtype} values; class rasters are uint8 or uint16")
    modulus = max(top, int(lookup.max()) if len(lookup) else 0) + 1
    if info.crs is not None:
        row_areas(
            info.crs, info.transform, info.height, 0, 1
        )  # a rotated geographic grid fails here
    base_task = dict(
        before=before,
        after=after,
        lookup=tuple(int(v) for v in lookup),
        modulus=modulus,
        warp=warp,
        crs_wkt=info.crs.to_wkt() if info.crs is not None else None,
        transform=tuple(info.transform)[:6],
        raster_width=info.width,
        raster_height=info.height,
    )
    windows = [
        (r0, c0, min(block, info.height - r0), min(block, info.width - c0))
        for r0 in range(0, info.height, block)
        for c0 in range(0, info.width, block)
    ]
    tasks = [
        ChangeTask(row_off=r, col_off=c, height=h, width=w, **base_task)  # type: ignore[arg-type]
        for r, c, h, w in windows
    ]
    progress = Progress(2 * len(tasks), unit="blocks", quiet=quiet)
    locks = lock_output_folders([out, table_path, vector_path], "change")
    try:
        with block_session(client, scheduler, workers, max_in_flight) as (session, limit):
            sums = _count(session.client, tasks, limit, progress)
            rows, classes, codes, values = _describe(sums, modulus, before_classes, changes_only)
            dtype, nodata = class_raster_dtype([c.value for c in classes])
            write = [
                ChangeTask(
                    **{
                        **t.__dict__,
                        "codes": codes,
                        "values": values,
                        "nodata": nodata,
                        "dtype": dtype,
                    }
                )
                for t in tasks
            ]
            staged: list[tuple[Path, Path]] = []
            if table_path is not None:
                tmp = stage_table(table_path, rows, COLUMNS)
                staged.append((tmp, table_path))
            tags = class_tags(classes, "geoseg change")
            tags.update(GEOSEG_CHANGE_BEFORE=before, GEOSEG_CHANGE_AFTER=after)
            with open_sinks(
                lambda: RasterSink(out, info, 1, nodata, classes=classes, tags=tags, dtype=dtype),
                extra=staged,
            ) as sinks:
                for _, (r, c, arr) in _stream(
                    session.client, change_block, write, limit, "geoseg-change"
                ):
                    progress.update(1)
                    sinks[0].write(arr, Window(c, r, arr.shape[1], arr.shape[0]))
            progress.close()
            if vector_path is not None:
                from geoseg.vector.vectorize import vectorize

                opts = dict(vector_options or {})
                unchanged = tuple(r["value"] for r in rows if not r["changed"])
                opts["skip_classes"] = tuple(opts.get("skip_classes", ())) + unchanged
                vectorize(
                    out,
                    vector_path,
                    client=session.client,
                    overwrite=overwrite,
                    max_in_flight=max_in_flight,
                    **opts,
                )
    finally:
        locks.close()
    return ChangeResult(
        rows,
        out,
        table_path,
        vector_path,
        sum(r["area_m2"] for r in rows),
        time.perf_counter() - t0,
        classes,
    )


def _stream(
    client: Any, func: Any, tasks: list[ChangeTask], limit: int | TaskSlots, name: str
) -> Any:
    from dask.base import tokenize

    from geoseg.dask.stream import stream
    from geoseg.raster.scenes import file_token

    stat = (file_token(tasks[0].before), file_token(tasks[0].after)) if tasks else None
    return stream(client, func, tasks, limit, key=lambda t, i: f"{name}-{tokenize(t, stat)}")


def _count(
    client: Any, tasks: list[ChangeTask], limit: int | TaskSlots, progress: Any
) -> dict[int, list[float]]:
    """Pixels and m² per pair code over the whole grid (first pass)."""
    sums: dict[int, list[float]] = {}
    for _, res in _stream(client, count_pairs, tasks, limit, "geoseg-change-pairs"):
        progress.update(1)
        for code, p, a in zip(res.codes.tolist(), res.pixels.tolist(), res.area.tolist()):
            s = sums.setdefault(code, [0, 0.0])
            s[0] += p
            s[1] += a
    return sums


def _describe(
    sums: dict[int, list[float]], modulus: int, classes: dict[int, ClassInfo], changes_only: bool
) -> tuple[list[dict[str, Any]], list[ClassInfo], tuple[int, ...], tuple[int, ...]]:
    """The table rows, the change raster's classes, and each pair code's value (sorted codes)."""
    rows: list[dict[str, Any]] = []
    out_classes: list[ClassInfo] = []
    codes: list[int] = []
    values: list[int] = []
    next_value = 1
    for code in sorted(sums):
        f, t = divmod(code, modulus)
        changed = f != t
        fn, tn = name_of(classes, f), name_of(classes, t)
        if changed or not changes_only:
            value = next_value
            next_value += 1
            name = f"{fn} -> {tn}" if changed else f"{fn} (unchanged)"
            colour = colour_of(classes, {}, t) if changed else _pale(colour_of(classes, {}, f))
            out_classes.append(ClassInfo(value, name, colour))
        else:
            value = -1
        codes.append(code)
        values.append(value)
        pixels, area = sums[code]
        rows.append(
            {
                "value": value if value >= 0 else None,
                "from": f,
                "from_name": fn,
                "to": t,
                "to_name": tn,
                "changed": changed,
                "pixels": int(pixels),
                "area_m2": area,
                "area_ha": area / 1e4,
            }
        )
    if not out_classes:
        out_classes.append(
            ClassInfo(1, "no change", (200, 200, 200))
        )  # an empty, valid colour table
    _, nodata = class_raster_dtype([c.value for c in out_classes])
    values = [v if v >= 0 else nodata for v in values]
    return rows, out_classes, tuple(codes), tuple(values)
