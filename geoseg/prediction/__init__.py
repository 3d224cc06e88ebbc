"""``geoseg.predict``: a scene in, a seamless class-raster COG out, in three stages.

* :mod:`geoseg.prediction.plan`: checks, model, margin and tile, grid; fails before any work.
* :mod:`geoseg.prediction.run`: tasks on the Dask cluster, a bounded number in flight.
* :mod:`geoseg.prediction.write`: results into temporary sinks as they arrive, then the commit.

What runs on a worker (read tile -> network -> core) is :mod:`geoseg.prediction.tasks`. This module
imports neither torch nor dask (``geoseg`` re-exports :func:`predict`); the stages do.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from geoseg.options import PredictOptions

if TYPE_CHECKING:
    from rasterio.windows import Window

    from geoseg.dask.session import DaskSession
    from geoseg.dask.stream import TaskSlots
    from geoseg.prediction.plan import PredictPlan
    from geoseg.progress import Progress


@dataclass
class PredictResult:
    """What a predict run wrote and measured."""

    output: Path | str
    probabilities: Path | str | None
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
    confidence: Path | str | None = None
    #: cells (re)computed by this run, and cells kept from an earlier run (``cells``)
    cells: int = 0
    cells_kept: int = 0

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
    confidence: str | os.PathLike[str] | None = None,
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
    quicklook: bool = False,
    **option_keywords: Any,
) -> PredictResult:
    """Segment ``scene`` into a class-raster COG at ``output`` (and class probabilities): uint8,
    or uint16 when a class value is above 254 (see :func:`geoseg.classes.class_raster_dtype`).

    ``scene`` is a raster, a list of single-band files, or a STAC item (``.json``, a file or
    an http(s) URL); band files and STAC assets are matched to the model's bands and resampled
    onto the finest band's grid with the ``resampling`` option (see :mod:`geoseg.raster.scenes`).

    How it tiles and infers is a :class:`geoseg.options.PredictOptions`: ``options``, with any of
    its fields also given as keywords (``tile=512, tta="d4"``). ``tile`` is the network input
    size including margins; ``auto`` is the tile of least work within ``memory_budget`` (see
    :mod:`geoseg.prediction.tile_budget`).

    The output has the scene's grid exactly; its pixels equal one pass of the network over the
    whole mirror-padded scene, whatever ``tile`` is, because margins cover the receptive field.
    ``vector`` also polygonizes the class raster (see :func:`geoseg.vector.vectorize.vectorize`, whose
    keyword arguments ``vector_options`` holds). ``tta`` (``flip`` or ``d4``), ``scales`` and
    ``crf`` (True or :class:`CRFParams`) add test-time augmentation and the dense CRF; the
    automatic margin grows to cover them, so tiling stays exact. ``precision`` (bf16, fp16),
    ``channels_last`` and ``compile`` tune the forward pass. ``on_error="skip"`` writes nodata
    where a tile task fails and lists those windows (result ``skipped``, and a JSON report
    beside the output) instead of failing the run. ``client``: an existing
    ``distributed.Client`` (else ``scheduler``, else ``workers`` local worker processes, else
    one worker in this process: see :func:`geoseg.dask.session.inference_session`).
    ``verbose`` lets the local workers' own logs through to stderr.

    ``confidence``: also write the winning class's probability as one uint8 band (1-255; 0 is
    nodata), the uncertainty map, at a fraction of the cost of the K probability bands.
    Outputs may be ``s3://`` URLs (made locally, uploaded once complete; see
    :mod:`geoseg.prediction.destinations`). ``cells=N`` (an option) makes ``output`` a folder of
    N x N pixel COG cells that the workers write and publish, with a VRT mosaic per raster and a
    STAC collection; a rerun keeps the cells already finished with the same inputs and options.
    Every raster is compressed once, on the workers (``compress``, ``compress_level``).
    ``quicklook``: also a PNG of the committed class raster, with class areas (see
    :func:`geoseg.results.quicklook.output_quicklook`: ``OUTPUT.png``, or ``quicklook.png`` in a
    cells folder; none for an ``s3://`` output).

    No output may be the scene, the model or another output; while writing, the output folders
    are locked (shared: a batch job cannot clean them up meanwhile); the outputs are committed
    all or nothing, polygons included.
    """
    from geoseg.dask.session import inference_session
    from geoseg.prediction.plan import plan_predict
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    opts = PredictOptions.from_keywords(options, **option_keywords)
    plan = plan_predict(
        scene,
        output,
        model,
        opts,
        probabilities,
        vector,
        overwrite,
        tiles_per_task,
        vector_options=vector_options,
        confidence=confidence,
    )
    png = None
    if quicklook:
        from geoseg.results.quicklook import output_quicklook

        png = output_quicklook(output, plan.destinations.cells, overwrite)
    try:
        if plan.destinations.cells and not plan.destinations.remote:
            Path(plan.destinations.output).mkdir(exist_ok=True)  # locked while cells are written
        cluster = inference_session(client, scheduler, workers, verbose)
        with locked_session(plan, cluster, "predict") as session:
            result = execute(
                plan,
                session,
                Progress(plan.tiles, quiet=quiet),
                max_in_flight=max_in_flight,
                overwrite=overwrite,
                vector_options=vector_options,
                started=t0,
            )
            if png is not None:  # after the class raster is committed
                from geoseg.results.quicklook import output_quicklook_write

                output_quicklook_write(
                    result.output, png, plan.destinations.cells, session.client, max_in_flight
                )
            return result
    finally:
        plan.destinations.cleanup()


@contextlib.contextmanager
def locked_session(
    plan: PredictPlan, session: contextlib.AbstractContextManager[DaskSession], what: str
) -> Iterator[DaskSession]:
    """``session`` entered once ``plan``'s output folders are locked (shared: a batch job cannot
    clean them up meanwhile) for ``what``; what :func:`predict` and ``geoseg.map`` run
    :func:`execute` in."""
    from geoseg.fs import lock_output_folders

    outputs = [plan.output, plan.probabilities, plan.confidence, plan.vector]
    with lock_output_folders(outputs, what), session as entered:
        yield entered


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
    tasks drawing on one :class:`~geoseg.dask.stream.TaskSlots` (``max_in_flight``).
    """
    from geoseg.dask.session import dashboard_link
    from geoseg.prediction.cells_state import finished_cells, run_token, start_cells
    from geoseg.prediction.run import raster_metas, run_cells
    from geoseg.prediction.write import finish_cells, write_cell_outputs, write_vector

    t0 = time.perf_counter() if started is None else started
    layout = plan.layout
    assert layout is not None
    dest = plan.destinations
    metas = raster_metas(plan)
    token = run_token(plan, metas)
    skip: set[tuple[int, int]] = set()
    if dest.cells:
        skip = finished_cells(plan, metas, token, overwrite)
        start_cells(plan, token)
    run = run_cells(session, plan, max_in_flight, token, skip)
    link = dashboard_link(session)
    kept = f"; {len(skip)} cells finished before, kept" if skip else ""
    progress.message(
        f"geoseg: {plan.scene.width}x{plan.scene.height} px, {layout.tiles} tiles of up to "
        f"{plan.grid.tile_height}x{plan.grid.tile_width} (margin {plan.margin}, overlap factor "
        f"{layout.overlap_factor:.2f}"
        + (f"; {plan.tile_choice.describe()}" if plan.tile_choice else "")
        + f") in {len(run.tasks)} cells of {layout.size} px{kept} "
        f"on {run.threads} worker thread(s)" + (f"; dashboard {link}" if link else "")
    )
    if skip:
        done = [c for c in layout if (c.row, c.col) in skip]
        progress.update(
            sum(len(c.grid) for c in done), sum(int(c.window.width * c.window.height) for c in done)
        )

    def polygons() -> None:
        if plan.vector is not None:
            write_vector(
                plan,
                session.client,
                overwrite,
                progress.quiet,
                vector_options,
                progress,
                max_in_flight=max_in_flight,
            )

    if dest.cells:
        skipped = finish_cells(plan, run.results, metas, progress, len(skip), token)
        polygons()
    else:
        skipped = write_cell_outputs(plan, run.results, metas, progress, overwrite, then=polygons)
        if dest.remote:
            from geoseg.prediction.destinations import skipped_report_path

            staged = [(dest.local[m.spec.name], dest.final(m.spec.name)) for m in metas]
            if skipped:
                staged.append((skipped_report_path(plan.output), dest.output + ".skipped.json"))
            dest.upload(staged, overwrite)
    return PredictResult(
        output=dest.output if dest.remote or dest.cells else plan.output,
        probabilities=(dest.probabilities if dest.remote else plan.probabilities),
        confidence=(dest.confidence if dest.remote else plan.confidence),
        tiles=layout.tiles,
        tasks=len(run.tasks),
        pixels=plan.scene.pixels,
        seconds=time.perf_counter() - t0,
        tile=plan.tile,
        margin=plan.margin,
        overlap_factor=layout.overlap_factor,
        model=plan.model.name,
        skipped=[s.window for s in skipped],
        stac_item=plan.stac_item,
        cells=len(run.tasks),
        cells_kept=len(skip),
    )


__all__ = ["PredictResult", "execute", "predict"]
