"""Predict, stage 2: the plan's tasks on the Dask cluster, a bounded number in flight.

Tasks carry paths, windows and the model's path and hash (the file itself reaches workers once
through :class:`geoseg.cluster.ModelPlugin`); keys are deterministic. Results come back as
they complete, for :mod:`geoseg.predict.write` to write at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from geoseg.cluster import DaskSession, TaskSlots, cpu_count, send_model, stream
from geoseg.io import file_token
from geoseg.predict.plan import PredictPlan, plan_tasks
from geoseg.stitch import TileResult
from geoseg.errors import TileError
from geoseg.scenes import describe
from geoseg.worker import TileTask, nodata_results, run_tile_task, tiles_text


@dataclass
class TaskRun:
    """The tasks of one scene and their results, as they complete (consumed once)."""

    tasks: list[TileTask]
    threads: int
    results: Iterator[list[TileResult]]


def run_tasks(session: DaskSession, plan: PredictPlan, max_in_flight: int | TaskSlots | None = None,
              keep_logits: bool = False) -> TaskRun:
    """Submit the plan's tasks lazily, at most ``max_in_flight`` at a time (default: 2 per
    worker thread; or slots shared with scenes run at once), and hand back their results in
    completion order."""
    client = session.client
    nthreads = session.threads
    # a local cluster we started: share this machine's cores among its workers (each runs one
    # batch at a time on them, see Engine.lock)
    torch_threads = max(1, cpu_count() // session.workers) if session.cluster is not None else None
    tasks = plan_tasks(
        plan.grid, plan.scene.path, plan.bands, str(Path(plan.model.path).resolve()),
        plan.model.sha256, plan.device, plan.batch_size, plan.probabilities is not None,
        plan.tiles_per_task, torch_threads, keep_logits=keep_logits, options=plan.options,
        skip_errors=plan.skip_errors, engine=plan.engine, column_bands=plan.column_bands,
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
    client: Any, tasks: Sequence[TileTask], limit: int | TaskSlots, resources: dict[str, float] | None = None,
) -> Iterator[list[TileResult]]:
    """Tile results of ``tasks`` as they complete, at most ``limit`` tasks in flight. A tile that
    fails is not retried (it would fail again); a task that killed every worker running it
    (``KilledWorker``) fails the run in one line, or is written as nodata under skip."""
    for _, results in stream(client, run_tile_task, tasks, limit, key=task_key, resources=resources,
                             on_killed=killed_workers):
        yield results


def killed_workers(task: TileTask, exc: BaseException) -> list[TileResult]:
    """A task that took down its workers (out of memory, a crash in native code): like a tile
    that cannot be read, it fails the run, or under ``on_error="skip"`` its tiles are nodata."""
    message = (f"{describe(task.scene)}: {tiles_text(task)} failed: the workers running them died "
               f"({type(exc).__name__}; out of memory or a crash); lower --batch-size or --tile, "
               "or --on-error skip writes nodata there instead")
    if not task.skip_errors:
        raise TileError(message) from None
    return nodata_results(task.tiles, message)
