"""``geoseg.map``: one seamless class raster over a region covered by many scenes.

The region is predicted as one virtual scene on the output grid (:mod:`geoseg.mapping.grid`):
cells are planned as for a scene, and each cell's task reads a mosaic of only the scenes its
tiles reach (:mod:`geoseg.raster.mosaic`), warped onto the grid as windows are read
where a scene lies on another grid. Tiles read the real pixels of neighbouring scenes for their
margins, so the map has no seams where scenes meet. Everything after planning (cells, COG
assembly, ``--cells`` folders, ``s3://``, probabilities, polygons, ``on_error``) is predict's
(:func:`geoseg.prediction.execute`).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Sequence

from geoseg.options import MapOptions, PredictOptions, take_fields

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots
    from geoseg.mapping.plan import MapPlan
    from geoseg.prediction import PredictResult


def map(  # noqa: A001 - geoseg.map, like rasterio.merge: the library's name for the command
    scenes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    options: PredictOptions | None = None,
    map_options: MapOptions | None = None,
    *,
    probabilities: str | os.PathLike[str] | None = None,
    confidence: str | os.PathLike[str] | None = None,
    vector: str | os.PathLike[str] | None = None,
    vector_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    verbose: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    max_in_flight: int | TaskSlots | None = None,
    **keywords: Any,
) -> PredictResult:
    """Segment the region ``scenes`` cover into one class-raster COG at ``output``.

    ``scenes``: raster files and globs, STAC items (files or URLs), STAC ItemCollections or
    FeatureCollections (files or URLs), and manifests (``.txt``: a path or URL a line), in
    priority order for ``order="given"``. :class:`MapOptions` fields (``crs``, ``resolution``,
    ``order``, ``aoi``) and :class:`PredictOptions` fields may be given as keywords; outputs and
    the cluster are as for :func:`geoseg.predict`. The result's ``extras`` hold ``scenes`` and
    ``planning_seconds``.
    """
    from geoseg.mapping.plan import plan_map

    t0 = time.perf_counter()
    rest = dict(keywords)
    mopts = MapOptions.from_keywords(map_options, **take_fields(rest, MapOptions))
    opts = PredictOptions.from_keywords(options, **rest)
    inputs = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
    mplan = plan_map(
        inputs,
        output,
        model,
        opts,
        mopts,
        probabilities,
        vector,
        overwrite,
        vector_options=vector_options,
        confidence=confidence,
    )
    return run_map(
        mplan,
        quiet=quiet,
        verbose=verbose,
        workers=workers,
        scheduler=scheduler,
        client=client,
        max_in_flight=max_in_flight,
        overwrite=overwrite,
        vector_options=vector_options,
        started=t0,
    )


def run_map(
    mplan: MapPlan,
    *,
    quiet: bool = True,
    verbose: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    max_in_flight: int | TaskSlots | None = None,
    overwrite: bool = False,
    vector_options: dict[str, Any] | None = None,
    started: float | None = None,
) -> PredictResult:
    """Run a planned map (:func:`geoseg.mapping.plan.plan_map`) on a cluster and commit its
    outputs, all or nothing (a batch job plans once to check whether it is done)."""
    from geoseg.dask.session import inference_session
    from geoseg.prediction import execute, locked_session
    from geoseg.progress import Progress

    t0 = time.perf_counter() if started is None else started
    plan = mplan.predict
    try:
        if plan.destinations.cells and not plan.destinations.remote:
            for folder in plan.destinations.local.values():
                folder.mkdir(parents=True, exist_ok=True)
        progress = Progress(plan.tiles, quiet=quiet)
        dated = ", ".join(f"{n} by {src}" for src, n in mplan.date_sources.items())
        progress.message(
            f"geoseg: map of {len(mplan.scenes)} scenes on {mplan.grid.crs.to_string()} at "
            f"{mplan.grid.resolution[0]:g} x {mplan.grid.resolution[1]:g}, planned in {mplan.seconds:.2f} s"
            + (f"; newest first ({dated})" if mplan.order == "newest" else "")
        )
        cluster = inference_session(client, scheduler, workers, verbose)
        with locked_session(plan, cluster, "map") as session:
            result = execute(
                plan,
                session,
                progress,
                max_in_flight=max_in_flight,
                overwrite=overwrite,
                vector_options=vector_options,
                started=t0,
            )
    finally:
        plan.destinations.cleanup()
    result.extras.update(scenes=len(mplan.scenes), planning_seconds=mplan.seconds)
    return result


__all__ = ["MapOptions", "map", "run_map"]
