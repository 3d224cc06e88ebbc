"""Dask sessions: a client on a local cluster or a scheduler's address, closed (with this
process's open scenes) when the run ends; the one place clients are opened."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

from geoseg.errors import SchedulerError


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class DaskSession:
    """A client, and the local cluster behind it when this process started one (else None)."""

    client: Any
    cluster: Any = None
    #: False for a local cluster started without the dashboard
    dashboard: bool = True

    @property
    def threads(self) -> int:
        """Worker threads of the cluster (at least 1)."""
        return sum(self.client.nthreads().values()) or 1

    @property
    def workers(self) -> int:
        """Workers of the cluster (at least 1)."""
        return len(self.client.nthreads()) or 1


#: Dask settings of a local cluster without a dashboard, where nobody sees the statistical
#: profile (the worker sampled its busy threads' stacks every 10 ms) or the event loop's
#: 20 ms ticks (which only measure its latency): the event loop thread took 1.7 s of CPU of a
#: 4,096² predict of the built-in model (30 s on 2 busy cores), 0.65 s with these, which is
#: taken from the engine.
UNWATCHED: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
}


#: Threads of each local worker that runs inference: one task's batch runs on the engine (with
#: all the worker's cores, see :attr:`geoseg.engines.base.Engine.lock`) while the other task
#: reads and decodes its tiles.
INFERENCE_THREADS = 2


def connect(
    scheduler: str | None,
    workers: int | None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    verbose: bool = False,
    dashboard: bool = True,
) -> tuple[Any, Any]:
    """A ``(client, cluster)`` pair: a connection to ``scheduler``, or a new local cluster.

    ``cluster`` is None when connected to an existing scheduler (which we must not close).
    Prefer :func:`dask_session`, which also closes what it opened. The local workers' own logs
    (a failed task's traceback) stay off the user's terminal unless ``verbose``: geoseg reports
    each failure itself, in one line. Without a ``dashboard`` the local cluster runs none of the
    watchers only a dashboard shows (:data:`UNWATCHED`).
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
    # default: one thread per worker process; an in-process worker gets a thread per core
    threads_per_worker = threads_per_worker or (1 if processes else cpu_count())
    level = logging.WARNING if verbose else logging.CRITICAL
    settings: dict[str, Any] = {
        "distributed.worker.daemon": False,
        "logging.distributed": logging.getLevelName(level).lower(),
    }
    if not dashboard:
        settings.update(UNWATCHED)
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=":0",
            # without a dashboard: Dask's HTTP server stays (on a free port), bokeh is not imported
            scheduler_kwargs=None if dashboard else {"dashboard": False},
            silence_logs=level,
        )
    client = Client(cluster, set_as_default=False)
    return client, cluster


@contextlib.contextmanager
def dask_session(
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    verbose: bool = False,
    dashboard: bool = True,
) -> Iterator[DaskSession]:
    """``client`` when given (left open), else a connection to ``scheduler`` or a new local
    cluster of ``workers`` processes (threads with ``processes=False``; with a dashboard unless
    ``dashboard`` is false), closed on exit; ``verbose`` lets the local workers' logs through
    (see :func:`connect`)."""
    if client is not None:
        yield DaskSession(client)
        return
    own, cluster = connect(scheduler, workers, threads_per_worker, processes, verbose, dashboard)
    try:
        yield DaskSession(own, cluster, dashboard=dashboard or cluster is None)
    finally:
        own.close()
        if cluster is not None:
            cluster.close()


def inference_session(
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    verbose: bool = False,
) -> contextlib.AbstractContextManager[DaskSession]:
    """The session predict and batch run on: ``client`` or ``scheduler`` when given; with
    ``workers``, that many local worker processes; else one worker in this process.

    In this process the engine, ONNX Runtime or PyTorch, and GDAL release the GIL, so threads
    lose nothing to processes, while starting none saves a second import of torch, the model's
    load and every result's trip through a socket: 3 s of a 10 s run of a cheap network at
    8192² (docs/benchmarks.md). It has no dashboard either (bokeh's import and its updates took
    CPU from the run); local worker processes and clusters have one. Each worker has
    :data:`INFERENCE_THREADS` threads.
    """
    local = workers is not None
    session = dask_session(
        client,
        scheduler,
        workers,
        INFERENCE_THREADS,
        processes=local,
        verbose=verbose,
        dashboard=local,
    )
    if client is not None or scheduler is not None or local:
        return session
    return _closing_scenes(session)


@contextlib.contextmanager
def _closing_scenes(
    session: contextlib.AbstractContextManager[DaskSession],
) -> Iterator[DaskSession]:
    """``session``, and when it ends, the scenes this process's reader thread kept open are
    closed (a worker process keeps them for its next tasks; this process may go on for long)."""
    try:
        with session as s:
            yield s
    finally:
        from geoseg.raster.pool import close_scenes

        close_scenes()


def dashboard_link(session: DaskSession) -> str | None:
    """The Dask dashboard address, how to get one (it needs bokeh), or None when the session's
    cluster runs without one (geoseg's in-process default)."""
    import importlib.util

    if not session.dashboard:
        return None
    if importlib.util.find_spec("bokeh") is None:
        return "not available (bokeh is missing: pip install 'bokeh>=3.1')"
    return getattr(session.client, "dashboard_link", None)
