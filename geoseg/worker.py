"""What runs on a Dask worker: read a row of tiles -> run the engine -> keep the cores.

A task (:class:`TileTask`) carries a scene path, band list, tile windows and the model's path
and content hash, never arrays or weights. The worker opens the scene itself, loads the model
once per content hash and keeps it (:func:`worker_model`; the file reaches workers through
:class:`geoseg.cluster.ModelPlugin`), and halves its batch for good after CUDA runs out of
memory (:func:`batch_limit`). The engine (:func:`worker_engine`) takes raw tiles and returns uint8
class values and probabilities; a background thread reads the next batch while it runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import rasterio

from geoseg.raster.block_cache import bound_block_cache
from geoseg.errors import CheckpointError, ModelError, OptionError, TileError, first_line
from geoseg.options import InferenceOptions
from geoseg.classes import CLASS_NODATA
from geoseg.raster.read import no_georef_warning, read_env, read_mirrored
from geoseg.raster.scenes import file_token
from geoseg.memory import trim_heap
from geoseg.model_cache import cache_hit, model_cache_dir
from geoseg.paths import describe
from geoseg.stitch import TileResult, core_result
from geoseg.tiling import Tile

if TYPE_CHECKING:
    from geoseg.engines.protocol import InferenceEngine

_MODELS: dict[tuple[str, str, bool, bool], Any] = {}
_LOCK = threading.Lock()
_BATCH_LIMITS: dict[tuple[str, str], int] = {}
log = logging.getLogger("geoseg")


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


def run_tile_task(task: TileTask, emit: Callable[[TileResult], None] | None = None) -> list[TileResult]:
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
    return [TileResult(t.core, np.full((int(t.core.height), int(t.core.width)), CLASS_NODATA, np.uint8),
                       error=error) for t in tiles]


def tiles_text(task: TileTask) -> str:
    """Where a task's tiles are, for messages: rows and columns of their cores."""
    first, last = task.tiles[0].core, task.tiles[-1].core
    return (f"tiles at rows {first.row_off}-{last.row_off + last.height}, columns "
            f"{first.col_off}-{last.col_off + last.width}")


def _run_tile_task(task: TileTask, emit: Callable[[TileResult], None] | None = None) -> list[TileResult]:
    from geoseg.engines import device_name

    device = device_name(task.device)
    engine = worker_engine(task.model_path, task.model_sha256, device, task.engine, task.options,
                           task.torch_threads)
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
                    with engine.lock:  # one batch at a time on the device; other tasks read meanwhile
                        out = engine.run(data[start : start + size], valid[start : start + size],
                                         task.probabilities, task.keep_logits)
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


class TileReader:
    """Reads batches of tiles (mirrored at scene edges) for one task in this process's reader
    thread, so the next batch's pixels are read and decoded while the engine runs.

    The reader thread is shared by every task of the process (one per worker) and keeps the last
    few scenes open (:data:`OPEN_SCENES`): a task's reads queue behind those of the task running
    before it, so with two threads per worker one task reads while the other computes, and
    GDAL's block cache still holds the blocks a neighbouring row of tiles also covers (a new
    dataset per task decoded every block twice). A scene is reopened when its file changed.
    """

    def __init__(self, scene: str, bands: Sequence[int], cache_bytes: int | None = None) -> None:
        self.scene, self.bands, self.cache_bytes = scene, list(bands), cache_bytes

    def __enter__(self) -> "TileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def prefetch(self, tiles: Sequence[Tile]) -> Any:
        """A future of ``(data, valid)``: N x C x H x W raw pixels and N x H x W validity."""
        return _reader_pool().submit(self._read, tuple(tiles))

    def _read(self, tiles: tuple[Tile, ...]) -> tuple[np.ndarray, np.ndarray]:
        # each tile straight into its place in the batch (its blocks come from GDAL's cache when
        # a neighbour decoded them): no window of the whole row of tiles, no stacked copy of it
        height, width = tiles[0].input_height, tiles[0].input_width
        bound_block_cache(self.cache_bytes, self.scene)  # this scene's share among scenes in flight
        with read_env(self.scene):
            src = _open_scene(self.scene)
            data = np.empty((len(tiles), len(self.bands), height, width), src.dtypes[0])
            valid = np.empty((len(tiles), height, width), bool)
            for i, t in enumerate(tiles):
                read_mirrored(src, self.bands, t.input_row, t.input_col, height, width, out=(data[i], valid[i]))
        return data, valid


#: Scenes the reader thread keeps open (least recently used closed first).
OPEN_SCENES = 4
_OPEN: "OrderedDict[tuple[str, Any], Any]" = OrderedDict()
_POOL: Any = None
_POOL_PID = -1
_POOL_LOCK = threading.Lock()


def _reader_pool() -> Any:
    """This process's reader thread (created on first use; in a forked child, anew)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            _POOL, _POOL_PID = ThreadPoolExecutor(1, thread_name_prefix="geoseg-read"), os.getpid()
            _OPEN.clear()
        return _POOL


def _open_scene(scene: str) -> Any:
    """The open dataset of ``scene`` as its file is now; runs in the reader thread only."""
    key = (scene, repr(file_token(scene)))
    src = _OPEN.get(key)
    if src is not None:
        _OPEN.move_to_end(key)
        return src
    for old in [k for k in _OPEN if k[0] == scene]:  # the file changed: its old handle is stale
        _OPEN.pop(old).close()
    if scene.startswith("geoseg-mosaic:"):  # a map's cell: its scenes on the output grid
        from geoseg.raster.mosaic import open_mosaic

        src = open_mosaic(scene)
    else:
        with no_georef_warning():
            src = rasterio.open(scene)
    _OPEN[key] = src
    while len(_OPEN) > OPEN_SCENES:
        _OPEN.popitem(last=False)[1].close()
    return src


def close_scenes() -> None:
    """Close the scenes the reader thread keeps open (a worker between jobs, tests)."""
    if _POOL is not None and _POOL_PID == os.getpid():
        _POOL.submit(_close_all).result()


def _close_all() -> None:
    while _OPEN:
        _OPEN.popitem()[1].close()


# --- the model cache: one loaded model per content hash, device and tuning, per process -----


def worker_model(
    path: str, sha256: str, device: str, channels_last: bool = False, compile: bool = False,
) -> Any:
    """The loaded model with content hash ``sha256`` on ``device`` in this process, loaded once:
    from ``path`` when that file is here and has that hash, else from the model cache."""
    key = (sha256, device, channels_last, compile)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        return _tuned_model(path, sha256, device, channels_last, compile)


def _tuned_model(path: str, sha256: str, device: str, channels_last: bool, compile: bool) -> Any:
    """The cached model for these settings, loaded and tuned if new; the caller holds ``_LOCK``."""
    key = (sha256, device, channels_last, compile)
    model = _MODELS.get(key)
    if model is None:
        model = _load(path, sha256, device)
        if channels_last:
            import torch

            model.network = model.network.to(memory_format=torch.channels_last)
        if compile:
            model.network = _compiled(model.network)
        _MODELS[key] = model
    return model


def worker_model_file(path: str, sha256: str) -> str:
    """The model file with content hash ``sha256`` on this worker: ``path`` when it is here with
    that hash, else the copy the worker plugin put into the model cache (private to this user)."""
    from geoseg.models.config import file_sha256

    if os.path.isfile(path) and file_sha256(path) == sha256:
        return path
    cached = model_cache_dir() / f"{sha256}.pt"
    if cache_hit(cached) and file_sha256(cached) == sha256:
        return str(cached)
    raise CheckpointError(
        f"model {path} is not on this worker, or differs from the client's copy (content hash "
        "mismatch); give every worker the same file"
    )


def _load(path: str, sha256: str, device: str) -> Any:
    """Load from ``path`` or the cache, whichever holds bytes with that hash; the bytes hashed
    are the bytes loaded (for ``.pt`` files), so a file swapped after the check is never loaded."""
    from geoseg.models.load import load_model

    for candidate in (Path(path), model_cache_dir() / f"{sha256}.pt"):
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            model = load_model(candidate, device=device, data=data)
            model.path = path
            return model
    raise CheckpointError(
        f"model {path} is not on this worker, or differs from the client's copy (content hash "
        "mismatch); give every worker the same file"
    )


_ENGINES: dict[tuple[Any, ...], InferenceEngine] = {}


def worker_engine(path: str, sha256: str, device: str, engine: str, options: InferenceOptions,
                  threads: int | None = None) -> InferenceEngine:
    """The inference engine for a model on ``device`` in this process, built once per model hash,
    engine and options: ``auto`` resolves here, where the device is known (ONNX Runtime on the
    CPU, PyTorch with channels-last on CUDA); a ``.pt`` model is converted to ONNX once per hash
    (see :func:`geoseg.models.onnx.cached_onnx`), never per task. ``threads``: ONNX Runtime's
    intra-op threads for a new engine (default: torch's count where torch is loaded, else all).

    Plain inference under ONNX Runtime on the CPU from an ONNX file (an ONNX model, or a ``.pt``
    model converted before) is :class:`geoseg.engines.onnx_cpu.CpuEngine`: it imports no torch."""
    key = (sha256, device, engine, options)
    found = _ENGINES.get(key)
    if found is not None:
        return found
    with _LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = _ENGINES[key] = _build_engine(path, sha256, device, engine, options, threads)
    return found


def _build_engine(path: str, sha256: str, device: str, engine: str, options: InferenceOptions,
                  threads: int | None) -> InferenceEngine:
    from geoseg.engines import resolve_engine
    from geoseg.models.onnx_file import cached_onnx_path, is_onnx_file, read_onnx_model

    local = worker_model_file(path, sha256)
    fmt = "onnx" if is_onnx_file(local) else "torch"
    name = resolve_engine(engine, fmt, device.split(":")[0], options)
    if name == "onnx":
        # a .pt model is loaded (with torch) only to convert it, once per hash, and not kept
        onnx_file: str | Path = local
        if fmt == "torch":
            onnx_file = cached_onnx_path(sha256)
            if not cache_hit(onnx_file):
                from geoseg.models.onnx import cached_onnx

                onnx_file = cached_onnx(local, sha256)
        config, summary = read_onnx_model(onnx_file)
        # both files are named by the model's content hash; fused graphs are cached by it too
        if device == "cpu" and options.plain:
            from geoseg.engines.onnx_cpu import CpuEngine

            cpu = CpuEngine(onnx_file, config, options, threads, summary=summary, cache_key=sha256)
            if cpu.fused_available():
                return cpu
        import torch

        from geoseg.engines.ort import OnnxEngine

        return OnnxEngine(onnx_file, config, torch.device(device), options, threads, summary=summary,
                          cache_key=sha256)
    import torch

    from geoseg.engines.pytorch import TorchEngine

    if engine == "auto" and device.startswith("cuda"):
        options = replace(options, channels_last=True)
    model = _tuned_model(path, sha256, device, options.channels_last, options.compile)
    return TorchEngine(model.network, model.config, torch.device(device), options)


def _compiled(network: Any) -> Any:
    """``torch.compile`` the network; where compiling fails (no C compiler, unsupported op) the
    first call says so once and the network runs eagerly from then on."""
    import torch

    class CompiledOrEager(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.compiled: Any = torch.compile(net, dynamic=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.compiled is not None:
                try:
                    return self.compiled(x)
                except Exception as exc:  # noqa: BLE001 - compilation is an optimisation only
                    log.warning("geoseg: torch.compile failed (%s); running eagerly", first_line(exc))
                    self.compiled = None
            return self.net(x)

    return CompiledOrEager(network).eval()


# --- per-process limits ----------------------------------------------------------------------


def batch_limit(sha256: str, device: str, requested: int) -> int:
    """The batch size this worker uses for a model: ``requested``, or less after CUDA ran out of memory."""
    return min(requested, _BATCH_LIMITS.get((sha256, device), requested))


def lower_batch_limit(sha256: str, device: str, failed: int) -> int:
    """Halve the batch after an out-of-memory error; logged once per model and size."""
    new = max(1, failed // 2)
    key = (sha256, device)
    if _BATCH_LIMITS.get(key, failed + 1) > new:
        _BATCH_LIMITS[key] = new
        log.warning("geoseg: %s ran out of memory at batch %d; using batch %d from now on", device, failed, new)
    return new


def cuda_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA running out of memory (never where torch is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def set_torch_threads(n: int | None) -> None:
    """Limit torch's intra-op threads in this process (once), so workers do not oversubscribe."""
    if not n:
        return
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
