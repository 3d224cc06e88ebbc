"""Dask plumbing shared by predict, chip, vectorize and batch, and ``geoseg worker``.

* :func:`dask_session`: the one way to get a client: the caller's own, a connection to a
  scheduler, or a new local cluster, closed again only when this helper started it.
* :func:`stream`: the one bounded submission loop: at most ``limit`` tasks in flight, results
  yielded as they complete, a lost scheduler reported as :class:`SchedulerError` and pending
  work cancelled; :class:`TaskSlots` shares one such limit among streams run at once (a batch's
  scenes).
* :class:`ModelPlugin`: a worker plugin carrying a model file's bytes, named by their hash, so
  workers need no shared file system for the model (the worker side is :mod:`geoseg.worker`).
* :func:`worker_commands` / :func:`run_workers`: ``geoseg worker``, one Dask worker per GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.errors import CheckpointError, SchedulerError

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- sessions --------------------------------------------------------------------------------


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


#: Threads of each local worker that runs inference: one task's batch runs on the engine (with
#: all the worker's cores, see :attr:`geoseg.engines.base.Engine.lock`) while the other task
#: reads and decodes its tiles.
INFERENCE_THREADS = 2


def connect(
    scheduler: str | None, workers: int | None, threads_per_worker: int | None = None, processes: bool = True,
    verbose: bool = False, dashboard: bool = True,
) -> tuple[Any, Any]:
    """A ``(client, cluster)`` pair: a connection to ``scheduler``, or a new local cluster.

    ``cluster`` is None when connected to an existing scheduler (which we must not close).
    Prefer :func:`dask_session`, which also closes what it opened. The local workers' own logs
    (a failed task's traceback) stay off the user's terminal unless ``verbose``: geoseg reports
    each failure itself, in one line.
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
    with dask.config.set({"distributed.worker.daemon": False,
                          "logging.distributed": logging.getLevelName(level).lower()}):
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
    client: Any = None, scheduler: str | None = None, workers: int | None = None,
    threads_per_worker: int | None = None, processes: bool = True, verbose: bool = False,
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
    client: Any = None, scheduler: str | None = None, workers: int | None = None, verbose: bool = False,
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
    session = dask_session(client, scheduler, workers, INFERENCE_THREADS, processes=local, verbose=verbose,
                           dashboard=local)
    if client is not None or scheduler is not None or local:
        return session
    return _closing_scenes(session)


@contextlib.contextmanager
def _closing_scenes(session: contextlib.AbstractContextManager[DaskSession]) -> Iterator[DaskSession]:
    """``session``, and when it ends, the scenes this process's reader thread kept open are
    closed (a worker process keeps them for its next tasks; this process may go on for long)."""
    try:
        with session as s:
            yield s
    finally:
        from geoseg.worker import close_scenes

        close_scenes()


# --- bounded submission ----------------------------------------------------------------------


class TaskSlots:
    """The in-flight budget of one run, shared by every bounded :func:`stream` drawing on it.

    Several scenes predicted at once each stream their tasks, but together they keep at most
    ``size`` tasks in flight, so memory does not grow with the number of scenes. A stream that
    has nothing in flight is served before one that has (no scene starves while another is
    being finished). ``demand`` counts tasks not yet submitted, so a batch knows when to start
    another scene. :meth:`cancel` (Ctrl-C) makes every stream stop at once with
    ``KeyboardInterrupt`` and cancels its pending tasks.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self.demand = 0
        self.cancelled = False
        self._free = self.size
        self._waiting = 0
        self._cond = threading.Condition()
        self._hooks: set[Callable[[], None]] = set()

    @property
    def in_flight(self) -> int:
        return self.size - self._free

    def acquire(self, block: bool) -> bool:
        """Take a slot; ``block=False`` gives way to streams waiting with nothing in flight."""
        with self._cond:
            if block:
                self._waiting += 1
                try:
                    while self._free == 0 and not self.cancelled:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            if self.cancelled:
                raise KeyboardInterrupt("the run was interrupted")
            if self._free == 0 or (not block and self._waiting):
                return False
            self._free -= 1
            return True

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._free = min(self.size, self._free + n)
            self._cond.notify_all()

    def add_demand(self, n: int) -> None:
        with self._cond:
            self.demand += n

    def cancel(self) -> None:
        """Stop every stream drawing on these slots (their pending tasks are cancelled)."""
        with self._cond:
            self.cancelled = True
            hooks = list(self._hooks)
            self._cond.notify_all()
        for hook in hooks:
            with contextlib.suppress(Exception):
                hook()

    def _watch(self, hook: Callable[[], None]) -> None:
        with self._cond:
            self._hooks.add(hook)

    def _unwatch(self, hook: Callable[[], None]) -> None:
        with self._cond:
            self._hooks.discard(hook)


def stream(
    client: Any,
    func: Callable[[T], R],
    tasks: Sequence[T],
    limit: int | TaskSlots,
    key: Callable[[T, int], str] | None = None,
    resources: dict[str, float] | None = None,
    retries: int = 0,
    on_killed: Callable[[T, BaseException], R] | None = None,
) -> Iterator[tuple[int, R]]:
    """Run ``func`` on every task with at most ``limit`` in flight; yield ``(index, result)`` as
    each completes.

    Bounding the window on the client is what keeps memory flat: Dask's own queueing does not
    apply to tasks with resource restrictions, and results would otherwise pile up. ``limit``
    is a number, or :class:`TaskSlots` shared with other streams running at the same time.
    ``key`` gives deterministic task keys. A task whose worker dies is recomputed elsewhere by
    the scheduler (no ``retries`` by default: a task that fails fails the same way again); a
    task's own exception propagates unchanged, and so does ``KilledWorker`` when it took down
    every worker that ran it, unless ``on_killed(task, exc)`` turns it into a result or an
    error; losing the scheduler raises :class:`SchedulerError`; cancelled slots raise
    ``KeyboardInterrupt``. Work still pending when the caller stops is cancelled.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    slots = limit if isinstance(limit, TaskSlots) else TaskSlots(limit)
    queue: Iterator[tuple[int, T]] = iter(enumerate(tasks))
    left = len(tasks)
    pending: dict[str, Any] = {}
    index: dict[str, int] = {}
    task_of: dict[str, T] = {}
    ac = as_completed(loop=client.loop)

    def cancel_pending() -> None:
        client.cancel(list(pending.values()))

    def submit_next(block: bool) -> bool:
        nonlocal left
        if left == 0 or not slots.acquire(block):
            return False
        i, t = next(queue)
        left -= 1
        slots.add_demand(-1)
        try:
            fut = client.submit(func, t, key=key(t, i) if key else None, pure=False, retries=retries,
                                resources=resources)
        except BaseException:
            slots.release()
            raise
        pending[fut.key] = fut
        index[fut.key] = i
        task_of[fut.key] = t
        ac.add(fut)
        return True

    slots.add_demand(left)
    slots._watch(cancel_pending)
    try:
        while True:
            while submit_next(block=not pending):
                pass
            if not pending:
                return
            fut = next(ac)
            pending.pop(fut.key, None)
            task = task_of.pop(fut.key)
            slots.release()
            if slots.cancelled:
                raise KeyboardInterrupt("the run was interrupted")
            try:
                result = fut.result()
            except KilledWorker as exc:
                if on_killed is None:
                    raise
                result = on_killed(task, exc)
            except (OSError, TimeoutError, CancelledError) as exc:
                if fut.status == "error":
                    raise  # the task's own error, not the cluster's
                raise SchedulerError(
                    f"lost the Dask scheduler during the run ({type(exc).__name__}); "
                    "nothing was written to the output; rerun when the cluster is back"
                ) from exc
            fut.release()
            yield index.pop(fut.key), result
    finally:
        slots._unwatch(cancel_pending)
        slots.add_demand(-left)
        if pending:
            slots.release(len(pending))
            with contextlib.suppress(Exception):
                cancel_pending()


def dashboard_link(session: DaskSession) -> str | None:
    """The Dask dashboard address, how to get one (it needs bokeh), or None when the session's
    cluster runs without one (geoseg's in-process default)."""
    import importlib.util

    if not session.dashboard:
        return None
    if importlib.util.find_spec("bokeh") is None:
        return "not available (bokeh is missing: pip install 'bokeh>=3.1')"
    return getattr(session.client, "dashboard_link", None)


# --- the model file on every worker ----------------------------------------------------------


class ModelPlugin(WorkerPlugin):
    """Worker plugin carrying one model file's bytes to every worker (once per content hash),
    including workers that join or restart later; it drops the file into the worker's model
    cache (:func:`geoseg.model_cache.model_cache_dir`)."""

    def __init__(self, sha256: str, blob: bytes) -> None:
        self.sha256 = sha256
        self.blob = blob
        self.name = f"geoseg-model-{sha256[:16]}"

    def setup(self, worker: Any = None) -> None:
        if hashlib.sha256(self.blob).hexdigest() != self.sha256:
            raise CheckpointError("the model bytes sent to this worker are damaged (content hash mismatch)")
        from geoseg.model_cache import cache_added, cache_hit, model_cache_dir

        cache = model_cache_dir()
        local = cache / f"{self.sha256}.pt"
        if not cache_hit(local):
            from geoseg.fs import write_bytes_atomic

            write_bytes_atomic(local, self.blob)
            cache_added(local)

    def teardown(self, worker: Any = None) -> None:
        """Nothing to undo: the cached file may serve later runs of the same model."""


#: Model hashes already registered as plugins, per client (a batch's scenes share one model).
_SENT: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_SENT_LOCK = threading.Lock()


def send_model(client: Any, path: str | os.PathLike[str], sha256: str) -> None:
    """Make the model available on every worker of ``client``'s cluster, now and later (once
    per client and model: the scheduler hands the plugin to workers that join later)."""
    with _SENT_LOCK:
        sent = _SENT.setdefault(client, set())
        if sha256 in sent:
            return
        blob = Path(path).read_bytes()
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise CheckpointError(f"model file {path} changed while this run was starting; run again")
        plugin = ModelPlugin(sha256, blob)
        client.register_plugin(plugin, name=plugin.name)
        sent.add(sha256)


# --- geoseg worker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerCommand:
    """One ``dask worker`` process: its arguments and extra environment."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def gpu_count() -> int:
    """CUDA devices visible to this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_devices() -> list[str] | None:
    """The GPUs this process was given (``CUDA_VISIBLE_DEVICES``: indices, UUIDs or MIG
    instances, as SLURM and MIG set it), or None when it is not set."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    return [d.strip() for d in text.split(",") if d.strip()]


def worker_commands(
    scheduler: str, gpus: int, nthreads: int | None = None, memory_limit: str = "auto",
    name: str | None = None, visible: list[str] | None = None,
) -> list[WorkerCommand]:
    """The worker processes to start: one per GPU, each seeing only its device
    (``CUDA_VISIBLE_DEVICES``), advertising ``GPU=1``, 2 threads (one reads while the other
    computes); without GPUs one CPU worker. Any Dask deployment setting these flags works the same.

    Worker i sees the i-th GPU this process may use: the i-th entry of an inherited
    ``CUDA_VISIBLE_DEVICES`` (``visible``, read from the environment when None), else GPU i."""
    dask = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--memory-limit", memory_limit]
    if gpus > 0:
        devices = visible if visible is not None else visible_devices()
        if devices is not None and gpus > len(devices):
            raise SchedulerError(
                f"{gpus} GPU workers asked for, but CUDA_VISIBLE_DEVICES gives this process "
                f"{len(devices)} GPU(s) ({','.join(devices) or 'none'}); ask for at most {len(devices)}"
            )
        return [
            WorkerCommand(
                tuple(dask + ["--nthreads", str(nthreads or 2), "--resources", "GPU=1"]
                      + (["--name", f"{name}-gpu{i}"] if name else [])),
                (("CUDA_VISIBLE_DEVICES", devices[i] if devices is not None else str(i)),),
            )
            for i in range(gpus)
        ]
    return [WorkerCommand(tuple(dask + ["--nthreads", str(nthreads or cpu_count())]
                                + (["--name", f"{name}-cpu"] if name else [])))]


def run_workers(commands: list[WorkerCommand]) -> int:
    """Run the workers until they exit or this process is told to stop; returns their worst code."""
    procs = [subprocess.Popen(list(c.args), env={**os.environ, **dict(c.env)}) for c in commands]

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGTERM, previous)
    bad = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if bad and all(c != 0 for c in codes):
        raise SchedulerError(
            f"the Dask workers exited with code {bad[0]}; check that the scheduler address is right "
            "and reachable from this machine"
        )
    return 0
