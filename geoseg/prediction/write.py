"""Predict, stage 3: write results as they arrive, then commit the outputs.

Each result goes into a hidden temporary GeoTIFF beside its output; when every tile is in,
the sinks become COGs renamed onto the output paths (:func:`geoseg.raster.sink.open_sinks`), so a
failed run leaves nothing at an output path. Tiles skipped under ``on_error="skip"`` are
listed in ``OUTPUT.skipped.json``; polygons, when asked for, are made from the final raster.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from rasterio.windows import Window

from geoseg.classes import class_raster_dtype, class_tags
from geoseg.errors import write_failed
from geoseg.fs import stage_json, write_bytes_atomic
from geoseg.memory import trim_heap
from geoseg.paths import describe
from geoseg.prediction.cell_task import CellResult
from geoseg.prediction.destinations import CELLS_MARKER, Destinations, skipped_report_path
from geoseg.prediction.plan import PredictPlan
from geoseg.prediction.stitch import TileResult
from geoseg.progress import Progress
from geoseg.raster.block_cache import bound_block_cache
from geoseg.raster.blocks import RasterMeta
from geoseg.raster.sink import RasterSink, open_sinks

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots


@dataclass
class SkippedTile:
    """A tile that failed under ``on_error="skip"``: its core window (written as nodata) and why."""

    window: Window
    error: str


def write_outputs(
    plan: PredictPlan,
    results: Iterable[list[TileResult]],
    progress: Progress,
    overwrite: bool,
    then: Callable[[], Any] | None = None,
) -> list[SkippedTile]:
    """Write every result into the class (and probability) sinks and commit them, all or
    nothing, with the list of skipped tiles beside the output; returns the skipped tiles.

    ``then`` (polygonizing) runs once the rasters are in place; if it fails, the previous
    outputs are put back exactly as they were (see :func:`geoseg.fs.publish_all`)."""
    info = plan.scene
    classes = plan.model.classes
    tags = class_tags(classes, plan.model.name)
    prob_path = plan.probabilities
    class_dtype, class_nodata = class_raster_dtype([c.value for c in classes])
    sinks: list[Callable[[], RasterSink] | None] = [
        lambda: RasterSink(
            plan.output, info, 1, class_nodata, classes, tags, ["class"], dtype=class_dtype
        ),
        (
            lambda: RasterSink(
                prob_path,
                info,
                len(classes),
                None,
                None,
                tags,
                [f"p({c.name})" for c in classes],
                overview_resampling="AVERAGE",
            )
        )
        if prob_path is not None
        else None,
    ]
    skipped: list[SkippedTile] = []
    report = skipped_report_path(plan.output)
    staged: list[tuple[Path, Path]] = []
    # the sinks' blocks being written stay whole in the cache (its share among scenes in flight)
    bound_block_cache(plan.cache_bytes, info.path)
    with open_sinks(*sinks, extra=staged, then=then) as opened:
        class_sink = opened[0]
        prob_sink = opened[1] if len(opened) > 1 else None
        for batch in results:
            for res in batch:
                if res.error is not None:
                    res.classes = np.full(res.classes.shape, class_nodata, class_dtype)
                    skipped.append(SkippedTile(res.core, res.error))
                    progress.message(f"geoseg: skipped: {res.error}")
                    if prob_sink is not None:
                        res.probabilities = np.zeros((len(classes), *res.classes.shape), np.uint8)
                class_sink.write(res.classes, res.core)
                if prob_sink is not None and res.probabilities is not None:
                    prob_sink.write(res.probabilities, res.core)
                progress.update(1, int(res.core.width * res.core.height))
        progress.close()
        if skipped:  # published together with the rasters
            staged.append(
                (stage_json(report, skipped_report(describe(info.path), skipped)), report)
            )
    if not skipped and overwrite:  # the old list of holes no longer describes the output
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    return skipped


def skipped_report(scene: str, skipped: list[SkippedTile]) -> dict[str, Any]:
    """The windows written as nodata and why: the JSON written beside the output."""
    return {
        "scene": scene,
        "windows": [
            {
                "row_off": int(s.window.row_off),
                "col_off": int(s.window.col_off),
                "height": int(s.window.height),
                "width": int(s.window.width),
                "error": s.error,
            }
            for s in skipped
        ],
    }


def write_vector(
    plan: PredictPlan,
    client: Any,
    overwrite: bool,
    quiet: bool,
    vector_options: dict[str, Any] | None,
    progress: Progress,
    max_in_flight: int | TaskSlots | None = None,
) -> None:
    """Polygonize the committed class raster into ``plan.vector`` on the same cluster (drawing
    on the same in-flight slots as the tile tasks, when shared)."""
    from geoseg.vector.vectorize import vectorize

    assert plan.vector is not None
    dest = plan.destinations
    # a folder of cells is polygonized through its mosaic
    source = Path(dest.output) / "classes.vrt" if dest.cells else plan.output
    vres = vectorize(
        source,
        plan.vector,
        probabilities=plan.probabilities,
        overwrite=overwrite,
        client=client,
        quiet=quiet,
        max_in_flight=max_in_flight,
        **(vector_options or {}),
    )
    progress.message(f"geoseg: {vres.polygons} polygons written to {vres.output}")


# --- cells: one COG assembled from the workers' tiles, or a folder of cells -------------------


def write_cell_outputs(
    plan: PredictPlan,
    results: Iterable[CellResult],
    metas: Sequence[RasterMeta],
    progress: Progress,
    overwrite: bool,
    then: Callable[[], Any] | None = None,
) -> list[SkippedTile]:
    """Place every cell's compressed tiles into one COG per raster and publish them all or
    nothing (with the skipped-tiles list); returns the skipped tiles. The client only moves
    bytes here (:class:`geoseg.raster.cog_writer.CogAssembler`)."""
    from geoseg.raster.cog_writer import CogAssembler

    info = plan.scene
    layout = plan.layout
    assert layout is not None
    crs = info.crs if info.georeferenced else None
    transform = info.transform if info.georeferenced else None
    paths = {
        "classes": plan.output,
        "probabilities": plan.probabilities,
        "confidence": plan.confidence,
    }
    factories = [
        (
            lambda m=m: CogAssembler(
                paths[m.spec.name] or plan.output,
                m,
                info.width,
                info.height,
                crs,
                transform,
                layout.local_levels,
            )
        )
        for m in metas
    ]
    skipped: list[SkippedTile] = []
    report = skipped_report_path(plan.output)
    staged: list[tuple[Path, Path]] = []
    try:
        with open_sinks(*factories, extra=staged, then=then) as sinks:
            for res in results:
                for sink, blocks, raw in zip(sinks, res.blocks, res.raw):
                    sink.add(res.window, blocks, raw)  # type: ignore[attr-defined]
                _note(res, skipped, progress)
                del res
                trim_heap()  # a cell's bytes are spooled: give their pages back, memory stays flat
            progress.close()
            if skipped:
                staged.append(
                    (stage_json(report, skipped_report(describe(info.path), skipped)), report)
                )
    except OSError as exc:
        raise write_failed(
            plan.output.parent if not plan.destinations.remote else "the local staging folder", exc
        ) from None
    if not skipped and overwrite:
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    return skipped


def _note(res: CellResult, skipped: list[SkippedTile], progress: Progress) -> None:
    for window, error in res.skipped:
        skipped.append(SkippedTile(window, error))
        progress.message(f"geoseg: skipped: {error}")
    progress.update(res.tiles, int(res.window.width * res.window.height))


def finish_cells(
    plan: PredictPlan,
    results: Iterable[CellResult],
    metas: Sequence[RasterMeta],
    progress: Progress,
    done: int,
    token: str,
) -> list[SkippedTile]:
    """Wait for the cells the workers publish, then write each raster's VRT mosaic, the STAC
    collection (an item per cell) and the skipped-tiles list into the folder."""
    from geoseg.prediction.mosaic import cells_collection, mosaic_vrt

    skipped: list[SkippedTile] = []
    for res in results:
        _note(res, skipped, progress)
    progress.close()
    dest = plan.destinations
    layout = plan.layout
    assert layout is not None
    files: dict[str, bytes] = {}
    for meta in metas:
        files[f"{meta.spec.name}.vrt"] = mosaic_vrt(plan.scene, layout, meta)
    collection, items = cells_collection(plan, layout, metas)
    files["collection.json"] = collection
    for stem, item in items.items():
        files[f"items/{stem}.json"] = item
    files[CELLS_MARKER] = json.dumps(
        {"geoseg": "cells", "token": token, "size": layout.size}
    ).encode()
    if skipped:
        files["skipped.json"] = json.dumps(
            skipped_report(describe(plan.scene.path), skipped), indent=1
        ).encode()
    publish_folder_files(dest, files)
    return skipped


def publish_folder_files(dest: Destinations, files: dict[str, bytes]) -> None:
    """Write small files (mosaics, STAC, marker) into a cells folder or prefix, each atomically."""
    if dest.remote:
        from geoseg.objectstore.uploads import put_bytes

        for name, data in files.items():
            put_bytes(dest.output.rstrip("/") + "/" + name, data)
        return
    root = Path(dest.output)
    for name, data in files.items():
        path = root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)
        except OSError as exc:
            raise write_failed(path, exc) from None
