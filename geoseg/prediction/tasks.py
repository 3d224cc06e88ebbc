"""What a worker does for a task: read each tile (mirrored at the scene's edges), run the engine,
keep the core; a failed tile becomes nodata and is reported, never a hole."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from geoseg.classes import CLASS_NODATA
from geoseg.errors import CheckpointError, ModelError, OptionError, TileError, first_line
from geoseg.memory import trim_heap
from geoseg.options import InferenceOptions
from geoseg.paths import describe
from geoseg.prediction.stitch import TileResult, core_result
from geoseg.prediction.worker_models import (
    batch_limit,
    cuda_out_of_memory,
    lower_batch_limit,
    set_torch_threads,
    worker_engine,
)
from geoseg.raster.pool import TileReader
from geoseg.tiling import Tile


@dataclass(frozen=True)
class TileTask:
    """What one Dask task needs: small, picklable, and the same on every run (deterministic keys)."""

    scene: str
    bands: tuple[int, ...]
    tiles: tuple[Tile, ...]
    model_path: str
    model_sha256: str
    device: str
    batch_size: int
    probabilities: bool
    keep_logits: bool = False
    torch_threads: int | None = None
    options: InferenceOptions = InferenceOptions()
    skip_errors: bool = False
    #: ``auto``, ``torch`` or ``onnx``; ``auto`` resolves on the worker, which knows its device.
    engine: str = "auto"
    #: GDAL block cache the scene's reads need (see :func:`geoseg.prediction.plan.block_cache_need`).
    cache_bytes: int | None = None


def run_tile_task(
    task: TileTask, emit: Callable[[TileResult], None] | None = None
) -> list[TileResult]:
    """Read the task's tiles (mirrored at scene edges), run the network, keep the cores.

    Any failure becomes a :class:`TileError` naming the scene and the window; with
    ``skip_errors`` the tiles are retried one by one and those that still fail come back as
    nodata results carrying the error. ``emit``: each result is handed to it as soon as it is
    made (a cell task stitches it at once) and the list returned is empty; after a failure
    under ``skip_errors`` tiles handed over before are handed over again.
    """
    try:
        results = _run_tile_task(task, emit)
        trim_heap()  # the task's batches are freed: keep the process's footprint flat
        return results
    except (CheckpointError, ModelError, OptionError, MemoryError):
        raise  # not this tile's fault: every tile would fail the same way
    except Exception as exc:
        if task.skip_errors:
            results = _tile_by_tile(task)
            if emit is None:
                return results
            for res in results:
                emit(res)
            return []
        raise TileError(
            f"{describe(task.scene)}: {tiles_text(task)} failed ({type(exc).__name__}: "
            f"{first_line(str(exc))}); --on-error skip writes nodata there instead"
        ) from exc


def _tile_by_tile(task: TileTask) -> list[TileResult]:
    """Each tile of a failed task on its own; those that fail again become nodata results."""
    results: list[TileResult] = []
    for tile in task.tiles:
        single = replace(task, tiles=(tile,), skip_errors=False)
        try:
            results.extend(run_tile_task(single))
        except TileError as exc:
            results.extend(nodata_results((tile,), str(exc)))
    return results


def nodata_results(tiles: Sequence[Tile], error: str) -> list[TileResult]:
    """Results that write nodata over ``tiles``' cores and say why (``on_error="skip"``)."""
    return [
        TileResult(
            t.core,
            np.full((int(t.core.height), int(t.core.width)), CLASS_NODATA, np.uint8),
            error=error,
        )
        for t in tiles
    ]


def tiles_text(task: TileTask) -> str:
    """Where a task's tiles are, for messages: rows and columns of their cores."""
    first, last = task.tiles[0].core, task.tiles[-1].core
    return (
        f"tiles at rows {first.row_off}-{last.row_off + last.height}, columns "
        f"{first.col_off}-{last.col_off + last.width}"
    )


def _run_tile_task(
    task: TileTask, emit: Callable[[TileResult], None] | None = None
) -> list[TileResult]:
    from geoseg.engines import device_name

    device = device_name(task.device)
    engine = worker_engine(
        task.model_path, task.model_sha256, device, task.engine, task.options, task.torch_threads
    )
    if engine.uses_torch:
        set_torch_threads(task.torch_threads)
    size = batch_limit(task.model_sha256, device, task.batch_size)
    chunks = [task.tiles[i : i + size] for i in range(0, len(task.tiles), size)]
    results: list[TileResult] = []
    with TileReader(task.scene, task.bands, task.cache_bytes) as reader:
        pending = reader.prefetch(chunks[0])
        for i, chunk in enumerate(chunks):
            data, valid = pending.result()
            if i + 1 < len(chunks):
                pending = reader.prefetch(chunks[i + 1])  # read the next batch while this one runs
            start = 0
            while start < len(chunk):
                size = batch_limit(task.model_sha256, device, task.batch_size)
                part = chunk[start : start + size]
                try:
                    with (
                        engine.lock
                    ):  # one batch at a time on the device; other tasks read meanwhile
                        out = engine.run(
                            data[start : start + size],
                            valid[start : start + size],
                            task.probabilities,
                            task.keep_logits,
                        )
                except Exception as exc:
                    if size == 1 or not cuda_out_of_memory(exc):
                        raise
                    sys.modules["torch"].cuda.empty_cache()
                    lower_batch_limit(task.model_sha256, device, size)
                    continue
                for j, t in enumerate(part):
                    res = core_result(out, j, t)
                    if emit is None:
                        results.append(res)
                    else:
                        emit(res)
                del out
                start += len(part)
    return results
