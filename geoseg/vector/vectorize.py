"""Polygons from a class raster, block by block on Dask, merged exactly across block borders.

Each block is labelled into connected components (per class, 4- or 8-connected) and each
component polygonized in global pixel coordinates. The client joins components that touch
across a block border (same class, adjacent pixels) with a union-find, unions their parts
exactly (integer pixel coordinates), applies the geotransform, and streams finished polygons to
the output as soon as no later block row can extend them. The result equals polygonizing the
whole raster in one pass.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import rasterio

from geoseg.classes import read_class_names
from geoseg.errors import VectorizeError, first_line
from geoseg.fs import (
    check_distinct_paths,
    check_output_path,
    lock_output_folders,
    remove_quietly,
    temporary_sibling,
)
from geoseg.raster.read import no_georef_warning, open_scene
from geoseg.vector.blocks import BlockResult, BlockTask, Finished, run_block_task
from geoseg.vector.formats import output_crs, output_format, require_pyarrow
from geoseg.vector.geometry import Measurer, apply_transform, reprojector
from geoseg.vector.merge import merge_blocks
from geoseg.vector.styles import qml_sidecar, raster_classes, write_gpkg_style, write_qml_sidecar
from geoseg.vector.write import GpkgWriter, ogr_date, publish_polygons, simplify_layer

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots


@dataclass
class VectorizeResult:
    """What was written and counted."""

    output: Path
    polygons: int
    per_class: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def _block_size(src: Any, requested: int | None) -> int:
    """Blocks aligned to the raster's internal tiling: a multiple of its block size, ~1024 px."""
    bh, bw = src.block_shapes[0]
    base = max(bh, bw) if bh == bw else max(bh, bw, 256)
    target = requested or 1024
    return max(base, target // base * base)


def vectorize(
    raster: str | os.PathLike[str],
    output: str | os.PathLike[str],
    connectivity: int = 4,
    skip_classes: Sequence[int] = (),
    min_area: float = 0.0,
    simplify: float | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    quiet: bool = True,
    timestamp: str | None = None,
    dst_crs: str | None = None,
    style: bool = True,
    verbose: bool = False,
    max_in_flight: int | TaskSlots | None = None,
) -> VectorizeResult:
    """Polygonize a class raster into ``output`` (format by extension), one feature per region.

    ``min_area`` (square CRS units) sieves smaller regions into their neighbours first;
    ``simplify`` (CRS units) simplifies the whole layer as a coverage, so shared borders stay
    shared. Attributes (Shapefile-safe names): class, class_name, area_m2, perim_m, pixels, mean_prob
    when a probabilities raster (from ``geoseg predict --probabilities``) is given.
    ``timestamp`` (ISO 8601) fixes the GeoPackage's last-change date, for byte-identical reruns.
    ``dst_crs`` (anything rasterio's ``CRS.from_user_input`` reads) writes the polygons in another
    CRS; areas and perimeters are still measured in the raster's CRS (geodesically when it is
    geographic). ``style`` adds the default QGIS style, categorized by class in the raster's colours
    (GeoPackage: its ``layer_styles`` table; other formats: a ``.qml`` sidecar).
    ``verbose`` lets the local workers' own logs through to stderr.
    ``max_in_flight``: block tasks in flight (default: two block rows, at least 2 per worker
    thread), or :class:`~geoseg.dask.stream.TaskSlots` shared with other work (a batch's scenes).
    """
    import shapely

    from geoseg.dask.session import cpu_count, dask_session
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    out = check_output_path(output, overwrite, "vector output")
    check_distinct_paths(
        {"class raster": raster, "probabilities raster": probabilities}, {"vector output": out}
    )
    driver = output_format(out)[0]
    info = open_scene(raster)
    target, out_crs = check_vector_options(
        out,
        info.crs,
        connectivity=connectivity,
        skip_classes=skip_classes,
        min_area=min_area,
        simplify=simplify,
        dst_crs=dst_crs,
    )
    if not np.issubdtype(np.dtype(info.dtype), np.integer):
        raise VectorizeError(
            f"{raster} holds {info.dtype} values: not a class raster; polygonize the class raster "
            "from 'geoseg predict', or round the values to integer classes first"
        )
    with no_georef_warning():
        with rasterio.open(raster) as src:
            names = read_class_names(src)
            block = _block_size(src, block_size)
            classes = (
                [c for c in raster_classes(src) if c.value not in set(skip_classes)]
                if style
                else []
            )
    sidecar = qml_sidecar(out) if classes and driver != "GPKG" else None
    if sidecar is not None:
        check_output_path(sidecar, overwrite, "style sidecar")
    reproject = reprojector(info.crs, target) if target is not None else None
    pixel_area = (
        abs(info.transform.a * info.transform.e - info.transform.b * info.transform.d) or 1.0
    )
    sieve_px = int(math.ceil(min_area / pixel_area)) if min_area > 0 else 0
    halo = min(sieve_px, 4 * block) if sieve_px else 0
    prob_band: tuple[tuple[int, int], ...] = ()
    if probabilities is not None:
        prob_band = _probability_bands(str(probabilities), info, names)
    rows = -(-info.height // block)
    cols = -(-info.width // block)
    tasks = [
        BlockTask(
            str(raster),
            r,
            c,
            r * block,
            c * block,
            min(block, info.height - r * block),
            min(block, info.width - c * block),
            connectivity,
            tuple(int(s) for s in skip_classes),
            sieve_px,
            halo,
            str(probabilities) if probabilities else None,
            prob_band,
            tuple(info.transform)[:6] if info.georeferenced else None,
            info.crs.to_wkt() if info.crs is not None else None,
            bool(simplify),
        )
        for r in range(rows)
        for c in range(cols)
    ]
    locks = lock_output_folders([out], "vectorize")
    tmp = temporary_sibling(out, ".gpkg")
    measure = Measurer(info.crs)
    per_class: dict[int, int] = {}
    progress = Progress(len(tasks), unit="blocks", quiet=quiet)
    try:
        # processes, not threads: turning GDAL's polygons into geometries holds the GIL
        with (
            dask_session(
                client, scheduler, workers or cpu_count(), processes=True, verbose=verbose
            ) as session,
            ogr_date(timestamp),
        ):
            limit = max_in_flight or max(2 * cols, 2 * session.threads)
            writer = GpkgWriter(
                tmp,
                info.crs if simplify else out_crs,
                probabilities is not None,
                reproject=None if simplify else reproject,
            )
            for item in merge_blocks(
                _rows(session.client, tasks, cols, limit, progress), connectivity, rows
            ):
                if isinstance(item, Finished):
                    writer.add_many(item, names)
                    for v, k in zip(*np.unique(item.classes, return_counts=True)):
                        per_class[int(v)] = per_class.get(int(v), 0) + int(k)
                    continue
                geom = item.geometry
                if simplify:
                    # a vertex at every pixel corner, so neighbours share identical edges (a valid
                    # coverage, as coverage_simplify requires); exact in integer pixel coordinates
                    geom = shapely.segmentize(geom, 1.0)
                geom = apply_transform(geom, info.transform) if info.georeferenced else geom
                area, perim = measure(geom)
                mean_p = None if item.prob_sum is None else item.prob_sum / max(item.pixels, 1)
                writer.add(
                    geom,
                    item.value,
                    names.get(item.value, str(item.value)),
                    area,
                    perim,
                    item.pixels,
                    mean_p,
                )
                per_class[item.value] = per_class.get(item.value, 0) + 1
            writer.close()
            progress.close()
            if simplify:
                simplify_layer(tmp, simplify, measure, reproject, out_crs)
            if classes and driver == "GPKG":
                write_gpkg_style(tmp, classes, "polygons", timestamp=timestamp)
            publish_polygons(tmp, out, driver, out_crs)
            if sidecar is not None:
                write_qml_sidecar(out, classes)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        locks.close()
    return VectorizeResult(out, sum(per_class.values()), per_class, time.perf_counter() - t0)


def _rows(
    client: Any, tasks: list[BlockTask], cols: int, limit: int | TaskSlots, progress: Any
) -> Iterator[list[BlockResult]]:
    """Block rows in order, computed with at most ``limit`` block tasks in flight."""
    from dask.base import tokenize

    from geoseg.dask.stream import stream
    from geoseg.raster.scenes import file_token

    stat = file_token(tasks[0].raster) if tasks else None
    pending: dict[int, dict[int, BlockResult]] = {}
    next_row = 0
    n_rows = -(-len(tasks) // cols) if tasks else 0
    for _, res in stream(
        client,
        run_block_task,
        tasks,
        limit,
        key=lambda t, i: f"geoseg-polygons-{tokenize(t, stat)}",
    ):
        progress.update(1)
        pending.setdefault(res.block_row, {})[res.block_col] = res
        while next_row < n_rows and len(pending.get(next_row, {})) == cols:
            yield list(pending.pop(next_row).values())
            next_row += 1


def _probability_bands(path: str, info: Any, names: dict[int, str]) -> tuple[tuple[int, int], ...]:
    """Band (0-based) of each class value in a geoseg probabilities raster, checked against the grid."""
    with rasterio.open(path) as p:
        if (p.width, p.height) != (info.width, info.height):
            raise VectorizeError(
                f"probabilities {path} are {p.width}x{p.height}, the classes {info.width}x{info.height}"
            )
        values = [int(c["value"]) for c in json.loads(p.tags().get("GEOSEG_CLASSES", "[]"))]
    if len(values) == 0:
        raise VectorizeError(
            f"{path} is not a geoseg probabilities raster (no GEOSEG_CLASSES metadata)"
        )
    return tuple((v, i) for i, v in enumerate(values))


def check_vector_options(
    output: str | os.PathLike[str], crs: Any = None, **options: Any
) -> tuple[Any, Any]:
    """Check polygon options before any work (predict runs it before predicting): the values
    (as :class:`geoseg.options.VectorOptions`), the format and what it needs (pyarrow), and the
    CRS the file would be in (GeoJSON: EPSG:4326). Returns :func:`geoseg.vector.formats.output_crs`'s ``(target, written)``."""
    from geoseg.options import VectorOptions

    run_keys = ("timestamp", "quiet", "verbose", "workers", "scheduler", "dst_crs", "style")
    try:
        values: dict[str, Any] = {
            k: (tuple(v) if k == "skip_classes" and isinstance(v, list) else v)
            for k, v in options.items()
            if k not in run_keys
        }
        VectorOptions(**values)
    except TypeError as exc:
        raise VectorizeError(f"unknown vector option ({first_line(exc)})") from None
    out = Path(output)
    if output_format(out)[0] == "Parquet":
        require_pyarrow()
    return output_crs(out, crs, options.get("dst_crs"))
