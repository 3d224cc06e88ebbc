"""Dask clients from settings, and the per-worker model cache.

A worker loads a model the first time a task names it (by content hash) and keeps it, so tasks
carry only the path and hash, never weights. The client also registers a worker plugin holding
the model file's bytes, named by their hash: the scheduler hands it to every worker once,
including workers that join or restart later, and the plugin drops the file into the worker's
local model cache, so workers need no shared file system for the model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.errors import SchedulerError

_MODELS: dict[tuple[str, str, bool, bool], Any] = {}
_LOCK = threading.Lock()
_BATCH_LIMITS: dict[tuple[str, str], int] = {}
log = logging.getLogger("geoseg")


def model_cache_dir() -> Path:
    """Where a worker keeps model files it received, named by content hash."""
    return Path(tempfile.gettempdir()) / "geoseg-models"


class ModelPlugin(WorkerPlugin):
    """Worker plugin carrying one model file's bytes to every worker (once per content hash)."""

    def __init__(self, sha256: str, blob: bytes) -> None:
        self.sha256 = sha256
        self.blob = blob
        self.name = f"geoseg-model-{sha256[:16]}"

    def setup(self, worker: Any = None) -> None:
        if hashlib.sha256(self.blob).hexdigest() != self.sha256:
            raise ValueError("the model bytes sent to this worker are damaged (content hash mismatch)")
        cache = model_cache_dir()
        cache.mkdir(exist_ok=True)
        local = cache / f"{self.sha256}.pt"
        if not local.exists():
            tmp = cache / f".{self.sha256}.{os.getpid()}.{threading.get_ident()}.part"
            tmp.write_bytes(self.blob)
            os.replace(tmp, local)

    def teardown(self, worker: Any = None) -> None:
        """Nothing to undo: the cached file may serve later runs of the same model."""


def send_model(client: Any, path: str | os.PathLike[str], sha256: str) -> None:
    """Make the model available on every worker of ``client``'s cluster, now and later."""
    plugin = ModelPlugin(sha256, Path(path).read_bytes())
    client.register_plugin(plugin, name=plugin.name)


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
    that hash, else the copy the worker plugin put into the model cache."""
    from geoseg.errors import CheckpointError
    from geoseg.models.checkpoint import file_sha256

    if os.path.isfile(path) and file_sha256(path) == sha256:
        return path
    cached = model_cache_dir() / f"{sha256}.pt"
    if cached.is_file() and file_sha256(cached) == sha256:
        return str(cached)
    raise CheckpointError(
        f"model {path} is not on this worker, or differs from the client's copy (content hash "
        "mismatch); give every worker the same file"
    )


def _load(path: str, sha256: str, device: str) -> Any:
    from geoseg.models.checkpoint import load_model

    model = load_model(worker_model_file(path, sha256), device=device)
    model.path = path
    return model


_ENGINES: dict[tuple[Any, ...], Any] = {}


def worker_engine(path: str, sha256: str, device: str, engine: str, options: Any) -> Any:
    """The inference engine for a model on ``device`` in this process, built once per model hash,
    engine and options: ``auto`` resolves here, where the device is known (ONNX Runtime on the
    CPU, PyTorch with channels-last on CUDA); a ``.pt`` model is converted to ONNX once per hash
    (see :func:`geoseg.models.onnx.cached_onnx`)."""
    key = (sha256, device, engine, options)
    found = _ENGINES.get(key)
    if found is not None:
        return found
    with _LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = _ENGINES[key] = _build_engine(path, sha256, device, engine, options)
    return found


def _build_engine(path: str, sha256: str, device: str, engine: str, options: Any) -> Any:
    from dataclasses import replace

    import torch

    from geoseg.engines import resolve_engine
    from geoseg.models.onnx import cached_onnx, is_onnx_file, read_onnx_model

    local = worker_model_file(path, sha256)
    fmt = "onnx" if is_onnx_file(local) else "torch"
    dev = torch.device(device)
    name = resolve_engine(engine, fmt, dev.type, options)
    if name == "torch":
        from geoseg.engines.pytorch import TorchEngine

        if engine == "auto" and dev.type == "cuda":
            options = replace(options, channels_last=True)
        model = _MODELS.get((sha256, device, options.channels_last, options.compile))
        if model is None:  # the lock is held: load directly
            model = _load(path, sha256, device)
            if options.channels_last:
                model.network = model.network.to(memory_format=torch.channels_last)
            if options.compile:
                model.network = _compiled(model.network)
            _MODELS[(sha256, device, options.channels_last, options.compile)] = model
        return TorchEngine(model.network, model.config, dev, options)
    from geoseg.engines.ort import OnnxEngine

    if fmt == "onnx":
        config, _ = read_onnx_model(local)
        return OnnxEngine(local, config, dev, options)
    loaded = _load(path, sha256, "cpu")
    return OnnxEngine(cached_onnx(local, sha256, loaded), loaded.config, dev, options)


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
                    log.warning("geoseg: torch.compile failed (%s); running eagerly", str(exc).splitlines()[0])
                    self.compiled = None
            return self.net(x)

    return CompiledOrEager(network).eval()


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


def set_torch_threads(n: int | None) -> None:
    """Limit torch's intra-op threads in this process (once), so workers do not oversubscribe."""
    if not n:
        return
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def connect(
    scheduler: str | None, workers: int | None, threads_per_worker: int = 1, processes: bool = True
) -> tuple[Any, Any]:
    """A ``(client, cluster)`` pair: a connection to ``scheduler``, or a new local cluster.

    ``cluster`` is None when connected to an existing scheduler (which we must not close).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SchedulerError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc.__class__.__name__}); "
                "check the address and that 'dask scheduler' is running"
            ) from exc
        return client, None
    n = workers or (max(1, cpu_count() // 2) if processes else 1)
    if not processes:
        threads_per_worker = max(threads_per_worker, cpu_count())
    with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error"}):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=":0",
            silence_logs=40,
        )
    client = Client(cluster, set_as_default=False)
    return client, cluster
