"""Predict, stage 3: write results as they arrive, then commit the outputs.

Each result goes into a hidden temporary GeoTIFF beside its output; when every tile is in,
the sinks become COGs renamed onto the output paths (:func:`geoseg.io.open_sinks`), so a
failed run leaves nothing at an output path. Tiles skipped under ``on_error="skip"`` are
listed in ``OUTPUT.skipped.json``; polygons, when asked for, are made from the final raster.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.block_cache import bound_block_cache
from geoseg.io import (
    RasterSink, class_raster_dtype, class_tags, open_sinks, stage_json,
)
from geoseg.scenes import describe
from geoseg.predict.plan import PredictPlan
from geoseg.progress import Progress
from geoseg.stitch import TileResult

if TYPE_CHECKING:
    from geoseg.cluster import TaskSlots


@dataclass
class SkippedTile:
    """A tile that failed under ``on_error="skip"``: its core window (written as nodata) and why."""

    window: Window
    error: str


def write_outputs(plan: PredictPlan, results: Iterable[list[TileResult]], progress: Progress,
                  overwrite: bool, then: Callable[[], Any] | None = None) -> list[SkippedTile]:
    """Write every result into the class (and probability) sinks and commit them, all or
    nothing, with the list of skipped tiles beside the output; returns the skipped tiles.

    ``then`` (polygonizing) runs once the rasters are in place; if it fails, the previous
    outputs are put back exactly as they were (see :func:`geoseg.io.publish_all`)."""
    info = plan.scene
    classes = plan.model.classes
    tags = class_tags(classes, plan.model.name)
    prob_path = plan.probabilities
    class_dtype, class_nodata = class_raster_dtype([c.value for c in classes])
    sinks: list[Callable[[], RasterSink] | None] = [
        lambda: RasterSink(plan.output, info, 1, class_nodata, classes, tags, ["class"], dtype=class_dtype),
        (lambda: RasterSink(
            prob_path, info, len(classes), None, None, tags,
            [f"p({c.name})" for c in classes], overview_resampling="AVERAGE",
        )) if prob_path is not None else None,
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
            staged.append((stage_json(report, skipped_report(describe(info.path), skipped)), report))
    if not skipped and overwrite:  # the old list of holes no longer describes the output
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    return skipped


def skipped_report_path(output: Path) -> Path:
    """Where the windows written as nodata under ``on_error="skip"`` are listed."""
    return output.with_name(output.name + ".skipped.json")


def skipped_report(scene: str, skipped: list[SkippedTile]) -> dict[str, Any]:
    """The windows written as nodata and why: the JSON written beside the output."""
    return {"scene": scene, "windows": [
        {"row_off": int(s.window.row_off), "col_off": int(s.window.col_off),
         "height": int(s.window.height), "width": int(s.window.width), "error": s.error}
        for s in skipped
    ]}


def write_vector(plan: PredictPlan, client: Any, overwrite: bool, quiet: bool,
                 vector_options: dict[str, Any] | None, progress: Progress,
                 max_in_flight: int | TaskSlots | None = None) -> None:
    """Polygonize the committed class raster into ``plan.vector`` on the same cluster (drawing
    on the same in-flight slots as the tile tasks, when shared)."""
    from geoseg.vectorize import vectorize

    assert plan.vector is not None
    vres = vectorize(plan.output, plan.vector, probabilities=plan.probabilities, overwrite=overwrite,
                     client=client, quiet=quiet, max_in_flight=max_in_flight, **(vector_options or {}))
    progress.message(f"geoseg: {vres.polygons} polygons written to {vres.output}")
