"""Bounded submission: at most N tasks in flight, results handed back as they finish
(:class:`TaskSlots` shared by several runs at once)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence, TypeVar

from geoseg.errors import SchedulerError

T = TypeVar("T")


R = TypeVar("R")


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
            fut = client.submit(
                func,
                t,
                key=key(t, i) if key else None,
                pure=False,
                retries=retries,
                resources=resources,
            )
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
