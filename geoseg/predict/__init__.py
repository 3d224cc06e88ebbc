"""``geoseg.predict``: a scene in, a seamless class-raster COG out, in three stages.

* :mod:`geoseg.predict.plan`: checks, model, margin and tile, grid; fails before any work.
* :mod:`geoseg.predict.run`: tasks on the Dask cluster, a bounded number in flight.
* :mod:`geoseg.predict.write`: results into temporary sinks as they arrive, then the commit.

What runs on a worker (read tile -> network -> core) is :mod:`geoseg.worker`. This module
imports neither torch nor dask (``geoseg`` re-exports :func:`predict`); the stages do.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from geoseg.options import PredictOptions

if TYPE_CHECKING:
    from rasterio.windows import Window

    from geoseg.cluster import DaskSession, TaskSlots
    from geoseg.predict.plan import PredictPlan
    from geoseg.progress import Progress


@dataclass
class PredictResult:
    """What a predict run wrote and measured."""

    output: Path
    probabilities: Path | None
    tiles: int
    tasks: int
    pixels: int
    seconds: float
    tile: int
    margin: int
    overlap_factor: float
    model: str
    skipped: list[Window] = field(default_factory=list)
    #: the STAC item the scene came from (absolute path or URL), when it was given as one
    stac_item: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def megapixels_per_second(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds else float("nan")


def predict(
    scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    options: PredictOptions | None = None,
    *,
    probabilities: str | os.PathLike[str] | None = None,
    vector: str | os.PathLike[str] | None = None,
    vector_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    verbose: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    tiles_per_task: int | None = None,
    max_in_flight: int | TaskSlots | None = None,
    **option_keywords: Any,
) -> PredictResult:
    """Segment ``scene`` into a class-raster COG at ``output`` (and class probabilities): uint8,
    or uint16 when a class value is above 254 (see :func:`geoseg.io.class_raster_dtype`).

    ``scene`` is a raster, a list of single-band files, or a STAC item (``.json``, a file or
    an http(s) URL); band files and STAC assets are matched to the model's bands and resampled
    onto the finest band's grid with the ``resampling`` option (see :mod:`geoseg.scenes`).

    How it tiles and infers is a :class:`geoseg.options.PredictOptions`: ``options``, with any of
    its fields also given as keywords (``tile=512, tta="d4"``). ``tile`` is the network input
    size including margins; ``auto`` is the tile of least work within ``memory_budget`` (see
    :mod:`geoseg.predict.tile_budget`).

    The output has the scene's grid exactly; its pixels equal one pass of the network over the
    whole mirror-padded scene, whatever ``tile`` is, because margins cover the receptive field.
    ``vector`` also polygonizes the class raster (see :func:`geoseg.vectorize.vectorize`, whose
    keyword arguments ``vector_options`` holds). ``tta`` (``flip`` or ``d4``), ``scales`` and
    ``crf`` (True or :class:`CRFParams`) add test-time augmentation and the dense CRF; the
    automatic margin grows to cover them, so tiling stays exact. ``precision`` (bf16, fp16),
    ``channels_last`` and ``compile`` tune the forward pass. ``on_error="skip"`` writes nodata
    where a tile task fails and lists those windows (result ``skipped``, and a JSON report
    beside the output) instead of failing the run. ``client``: an existing
    ``distributed.Client`` (else ``scheduler``, else ``workers`` local worker processes, else
    one worker in this process: see :func:`geoseg.cluster.inference_session`).
    ``verbose`` lets the local workers' own logs through to stderr.

    No output may be the scene, the model or another output; while writing, the output folders
    are locked (shared: a batch job cannot clean them up meanwhile); the outputs are committed
    all or nothing, polygons included.
    """
    from geoseg.cluster import inference_session
    from geoseg.io import lock_output_folders
    from geoseg.predict.plan import plan_predict
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    opts = PredictOptions.from_keywords(options, **option_keywords)
    plan = plan_predict(scene, output, model, opts, probabilities, vector, overwrite, tiles_per_task,
                        vector_options=vector_options)
    locks = lock_output_folders([plan.output, plan.probabilities, plan.vector], "predict")
    with locks, inference_session(client, scheduler, workers, verbose) as session:
        return execute(plan, session, Progress(len(plan.grid), quiet=quiet), max_in_flight=max_in_flight,
                       overwrite=overwrite, vector_options=vector_options, started=t0)


def execute(
    plan: PredictPlan,
    session: DaskSession,
    progress: Progress,
    max_in_flight: int | TaskSlots | None = None,
    overwrite: bool = False,
    vector_options: dict[str, Any] | None = None,
    started: float | None = None,
) -> PredictResult:
    """Run a checked plan on ``session``'s cluster and commit its outputs, polygons included,
    all or nothing (stages 2 and 3; the caller holds the output folders' locks).

    :func:`predict` calls it for one scene; a batch calls it for several scenes at once, their
    tasks drawing on one :class:`~geoseg.cluster.TaskSlots` (``max_in_flight``).
    """
    from geoseg.cluster import dashboard_link
    from geoseg.predict.run import run_tasks
    from geoseg.predict.write import write_outputs, write_vector

    t0 = time.perf_counter() if started is None else started
    grid = plan.grid
    run = run_tasks(session, plan, max_in_flight)
    link = dashboard_link(session)
    progress.message(
        f"geoseg: {plan.scene.width}x{plan.scene.height} px, {len(grid)} tiles of "
        f"{grid.tile_height}x{grid.tile_width} (margin {plan.margin}, overlap factor {grid.overlap_factor:.2f}"
        + (f"; {plan.tile_choice.describe()}" if plan.tile_choice else "") + f") in {len(run.tasks)} tasks "
        f"on {run.threads} worker thread(s)" + (f"; dashboard {link}" if link else "")
    )

    def polygons() -> None:
        if plan.vector is not None:
            write_vector(plan, session.client, overwrite, progress.quiet, vector_options, progress,
                         max_in_flight=max_in_flight)

    skipped = write_outputs(plan, run.results, progress, overwrite, then=polygons)
    return PredictResult(
        output=plan.output,
        probabilities=plan.probabilities,
        tiles=len(grid),
        tasks=len(run.tasks),
        pixels=plan.scene.pixels,
        seconds=time.perf_counter() - t0,
        tile=plan.tile,
        margin=plan.margin,
        overlap_factor=grid.overlap_factor,
        model=plan.model.name,
        skipped=[s.window for s in skipped],
        stac_item=plan.stac_item,
    )


__all__ = ["PredictResult", "execute", "predict"]
