"""Dask clients from settings, and the per-worker model cache.

A worker loads a model the first time a task names it (by content hash) and keeps it, so tasks
carry only the path and hash, never weights. The client also registers a worker plugin holding
the model file's bytes, named by their hash: the scheduler hands it to every worker once,
including workers that join or restart later, and the plugin drops the file into the worker's
local model cache, so workers need no shared file system for the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.errors import CheckpointError, SchedulerError

_MODELS: dict[tuple[str, str, bool, bool], Any] = {}
_LOCK = threading.Lock()
_BATCH_LIMITS: dict[tuple[str, str], int] = {}
log = logging.getLogger("geoseg")


def model_cache_dir() -> Path:
    """Where a worker keeps model files it received, named by content hash: one folder per user,
    readable by that user only (0700), so no other user can swap a file in it or be blocked by it."""
    folder = Path(tempfile.gettempdir()) / f"geoseg-models-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise CheckpointError(
            f"the model cache {folder} is not a folder of this user; remove it (another user or a "
            "symlink is in the way) and run again"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


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
        local = cache / f"{self.sha256}.pt"
        if not local.exists():
            fd, tmp = tempfile.mkstemp(prefix=f".{self.sha256}.", suffix=".part", dir=cache)
            with os.fdopen(fd, "wb") as f:
                f.write(self.blob)
            os.replace(tmp, local)

    def teardown(self, worker: Any = None) -> None:
        """Nothing to undo: the cached file may serve later runs of the same model."""


def send_model(client: Any, path: str | os.PathLike[str], sha256: str) -> None:
    """Make the model available on every worker of ``client``'s cluster, now and later."""
    blob = Path(path).read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise CheckpointError(f"model file {path} changed while this run was starting; run again")
    plugin = ModelPlugin(sha256, blob)
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


def _load(path: str, sha256: str, device: str) -> Any:
    """Load from ``path`` or the cache, whichever holds bytes with that hash; the bytes hashed
    are the bytes loaded, so a file swapped after the check cannot be loaded."""
    from geoseg.models.checkpoint import load_model

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
    scheduler: str | None, workers: int | None, threads_per_worker: int = 1, processes: bool = True,
    verbose: bool = False,
) -> tuple[Any, Any]:
    """A ``(client, cluster)`` pair: a connection to ``scheduler``, or a new local cluster.

    ``cluster`` is None when connected to an existing scheduler (which we must not close). The
    local workers' own logs (a failed task's traceback, once per attempt) stay off the user's
    terminal unless ``verbose``: geoseg reports each failure itself, in one line.
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
    level = logging.WARNING if verbose else logging.CRITICAL
    with dask.config.set({"distributed.worker.daemon": False,
                          "logging.distributed": logging.getLevelName(level).lower()}):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=":0",
            silence_logs=level,
        )
    client = Client(cluster, set_as_default=False)
    return client, cluster
