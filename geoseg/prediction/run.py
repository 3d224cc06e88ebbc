"""Predict, stage 2: the plan's tasks on the Dask cluster, a bounded number in flight.

Tasks carry paths, windows and the model's path and hash (the file itself reaches workers once
through :class:`geoseg.dask.plugin.ModelPlugin`); keys are deterministic. Results come back as
they complete, for :mod:`geoseg.prediction.write` to write at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, cast

from affine import Affine

from geoseg.dask.plugin import send_model
from geoseg.dask.session import DaskSession, cpu_count
from geoseg.dask.stream import TaskSlots, stream
from geoseg.errors import TileError
from geoseg.paths import describe
from geoseg.prediction.cell_task import CellResult, CellTask, run_cell_task
from geoseg.prediction.plan import PredictPlan, block_cache_need, plan_tasks
from geoseg.prediction.stitch import TileResult
from geoseg.prediction.tasks import TileTask, nodata_results, run_tile_task, tiles_text
from geoseg.raster.blocks import RasterMeta
from geoseg.raster.scenes import file_token


@dataclass
class TaskRun:
    """The tasks of one scene and their results, as they complete (consumed once)."""

    tasks: list[TileTask]
    threads: int
    results: Iterator[list[TileResult]]


def run_tasks(
    session: DaskSession,
    plan: PredictPlan,
    max_in_flight: int | TaskSlots | None = None,
    keep_logits: bool = False,
) -> TaskRun:
    """Submit the plan's tasks lazily, at most ``max_in_flight`` at a time (default: 2 per
    worker thread; or slots shared with scenes run at once), and hand back their results in
    completion order."""
    client = session.client
    nthreads = session.threads
    # a local cluster we started: share this machine's cores among its workers (each runs one
    # batch at a time on them, see Engine.lock)
    torch_threads = max(1, cpu_count() // session.workers) if session.cluster is not None else None
    tasks = plan_tasks(
        plan.grid,
        plan.scene.path,
        plan.bands,
        str(Path(plan.model.path).resolve()),
        plan.model.sha256,
        plan.device,
        plan.batch_size,
        plan.probabilities is not None,
        plan.tiles_per_task,
        torch_threads,
        keep_logits=keep_logits,
        options=plan.options,
        skip_errors=plan.skip_errors,
        engine=plan.engine,
        column_bands=plan.column_bands,
        cache_bytes=plan.cache_bytes,
    )
    resources = gpu_resources(client, plan.device)
    send_model(client, plan.model.path, plan.model.sha256)
    limit = max_in_flight or max(2, 2 * nthreads)
    return TaskRun(tasks, nthreads, stream_tasks(client, tasks, limit, resources))


def gpu_resources(client: Any, device: str) -> dict[str, float] | None:
    """``{"GPU": 1}`` when inference may run on CUDA (``auto`` or ``cuda``) and the cluster has
    workers started with ``--resources GPU=N``: inference tasks then go only there, while
    reading and writing need no GPU. Without such workers nothing is restricted (a restriction
    no worker satisfies would wait forever)."""
    if str(device) == "cpu":
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    if any(w.get("resources", {}).get("GPU") for w in workers):
        return {"GPU": 1}
    return None


def task_key(task: TileTask, index: int) -> str:
    """Deterministic key: the same scene, model and options give the same keys on every run."""
    from dask.base import tokenize

    stat = file_token(task.scene)
    return f"geoseg-tiles-{tokenize(task, stat)}-{index}"


def stream_tasks(
    client: Any,
    tasks: Sequence[TileTask],
    limit: int | TaskSlots,
    resources: dict[str, float] | None = None,
) -> Iterator[list[TileResult]]:
    """Tile results of ``tasks`` as they complete, at most ``limit`` tasks in flight. A tile that
    fails is not retried (it would fail again); a task that killed every worker running it
    (``KilledWorker``) fails the run in one line, or is written as nodata under skip."""
    for _, results in stream(
        client,
        run_tile_task,
        tasks,
        limit,
        key=task_key,
        resources=resources,
        on_killed=killed_workers,
    ):
        yield results


def killed_workers(task: TileTask, exc: BaseException) -> list[TileResult]:
    """A task that took down its workers (out of memory, a crash in native code): like a tile
    that cannot be read, it fails the run, or under ``on_error="skip"`` its tiles are nodata."""
    message = (
        f"{describe(task.scene)}: {tiles_text(task)} failed: the workers running them died "
        f"({type(exc).__name__}; out of memory or a crash); lower --batch-size or --tile, "
        "or --on-error skip writes nodata there instead"
    )
    if not task.skip_errors:
        raise TileError(message) from None
    return nodata_results(task.tiles, message)


# --- cells: one task per cell, which stitches, compresses and (with --cells) publishes ----------


def raster_metas(plan: PredictPlan) -> tuple[RasterMeta, ...]:
    """The rasters each cell makes, in :data:`~geoseg.prediction.destinations.RASTERS` order."""
    from geoseg.classes import class_raster_dtype, class_tags
    from geoseg.raster.blocks import Encoding, RasterSpec

    classes = plan.model.classes
    tags = tuple(class_tags(classes, plan.model.name).items())
    dtype, nodata = class_raster_dtype([c.value for c in classes])
    codec = cast(Any, plan.compress)
    # measured (docs/outputs.md): classes compress well at the codec's default level for little
    # work; probabilities are 8x the bytes and barely smaller at higher levels (DEFLATE 6: 3 %
    # smaller, 3x the time), so they get the fastest level, and horizontal differencing, which
    # shrinks smooth values by a fifth but makes classes larger
    fast = plan.compress_level or (1 if codec in ("deflate", "zstd") else None)
    plain, smooth = Encoding(codec, plan.compress_level, 1), Encoding(codec, fast, 2)
    cmap = tuple((c.value, (*c.color, 255)) for c in classes) + ((nodata, (0, 0, 0, 0)),)
    metas = [
        RasterMeta(RasterSpec("classes", 1, dtype, nodata, "mode", plain), cmap, tags, ("class",))
    ]
    if plan.probabilities is not None:
        metas.append(
            RasterMeta(
                RasterSpec("probabilities", len(classes), "uint8", None, "average", smooth),
                (),
                tags,
                tuple(f"p({c.name})" for c in classes),
            )
        )
    if plan.confidence is not None:
        metas.append(
            RasterMeta(
                RasterSpec("confidence", 1, "uint8", 0, "average", smooth),
                (),
                tags,
                ("confidence (probability of the winning class, 1-255)",),
            )
        )
    return tuple(metas)


def cell_tasks(
    plan: PredictPlan,
    torch_threads: int | None,
    token: str = "",
    skip: set[tuple[int, int]] | None = None,
) -> list[CellTask]:
    """A task per cell of the plan's layout (but those in ``skip``: finished before)."""
    from geoseg.prediction.destinations import RASTERS
    from geoseg.raster.blocks import overview_count

    layout = plan.layout
    assert layout is not None
    metas = raster_metas(plan)
    dest = plan.destinations
    levels = min(layout.local_levels, overview_count(plan.scene.width, plan.scene.height))
    model_path = str(Path(plan.model.path).resolve())
    probs = plan.probabilities is not None or plan.confidence is not None
    crs = plan.scene.crs.to_wkt() if plan.scene.georeferenced and plan.scene.crs else None
    tasks = []
    for cell in layout:
        if skip and (cell.row, cell.col) in skip:
            continue
        tiles = TileTask(
            scene=plan.scene.path,
            bands=tuple(plan.bands),
            tiles=tuple(cell.tiles),
            model_path=model_path,
            model_sha256=plan.model.sha256,
            device=plan.device,
            batch_size=plan.batch_size,
            probabilities=probs,
            torch_threads=torch_threads,
            options=plan.options,
            skip_errors=plan.skip_errors,
            engine=plan.engine,
            cache_bytes=block_cache_need(
                plan.scene, cell.grid, cell.grid.cols, 0, column_bands=False
            ),
        )
        destinations = None
        transform = None
        if dest.cells:
            destinations = tuple(dest.cell_destination(m.spec.name, cell.name) for m in metas)
            if crs is not None:
                t = plan.scene.transform * Affine.translation(
                    int(cell.window.col_off), int(cell.window.row_off)
                )
                transform = tuple(t)[:6]
        task = CellTask(
            tiles=tiles,
            window=cell.window,
            rasters=metas,
            levels=levels,
            raw_level=layout.local_levels < overview_count(plan.scene.width, plan.scene.height),
            destinations=destinations,
            crs=crs,
            transform=transform,
            token=token,
        )
        tasks.append(plan.cell_hook(cell, task) if plan.cell_hook is not None else task)
    assert all(m.spec.name in RASTERS for m in metas)
    return tasks


def run_cells(
    session: DaskSession,
    plan: PredictPlan,
    max_in_flight: int | TaskSlots | None = None,
    token: str = "",
    skip: set[tuple[int, int]] | None = None,
) -> CellRun:
    """Submit the plan's cell tasks, at most ``max_in_flight`` at a time (default: 2 per worker
    thread), and hand back their results in completion order."""
    client = session.client
    nthreads = session.threads
    torch_threads = max(1, cpu_count() // session.workers) if session.cluster is not None else None
    tasks = cell_tasks(plan, torch_threads, token, skip)
    resources = gpu_resources(client, plan.device)
    send_model(client, plan.model.path, plan.model.sha256)
    limit = max_in_flight or max(2, 2 * nthreads)

    def results() -> Iterator[CellResult]:
        for _, res in stream(
            client,
            run_cell_task,
            tasks,
            limit,
            key=cell_key,
            resources=resources,
            on_killed=killed_cell,
        ):
            yield res

    return CellRun(tasks, nthreads, results())


@dataclass
class CellRun:
    """The cell tasks of one scene and their results, as they complete (consumed once)."""

    tasks: list[CellTask]
    threads: int
    results: Iterator[CellResult]


def cell_key(task: CellTask, index: int) -> str:
    """Deterministic key of a cell task (scene file state included)."""
    from dask.base import tokenize

    return f"geoseg-cell-{tokenize(task, file_token(task.tiles.scene))}-{index}"


def killed_cell(task: CellTask, exc: BaseException) -> CellResult:
    """A cell whose task took down its workers: fails the run, or under ``on_error="skip"`` is
    made nodata here (compressed on the client: a rare path)."""
    from geoseg.prediction.cell_task import nodata_cell

    message = (
        f"{describe(task.tiles.scene)}: {tiles_text(task.tiles)} failed: the workers running them "
        f"died ({type(exc).__name__}; out of memory or a crash); lower --batch-size or --tile, "
        "or --on-error skip writes nodata there instead"
    )
    if not task.tiles.skip_errors:
        raise TileError(message) from None
    return nodata_cell(task, message)
