"""Dask clients from settings, and the per-worker model cache.

A worker loads a model the first time a task names it (by path and content hash) and keeps it,
so tasks carry only the path and hash, never weights.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from geoseg.errors import SchedulerError

_MODELS: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def worker_model(path: str, sha256: str, device: str) -> Any:
    """The loaded model for ``(path, sha256, device)`` in this process, loading it once."""
    key = (path, sha256, device)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from geoseg.errors import CheckpointError
            from geoseg.models.checkpoint import load_model

            model = load_model(path, device=device)
            if model.sha256 != sha256:
                raise CheckpointError(
                    f"model {path} on this worker differs from the client's copy "
                    "(content hash mismatch); give every worker the same file"
                )
            _MODELS[key] = model
    return model


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
