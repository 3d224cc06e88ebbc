"""The cluster the block-by-block results (``geoseg stats``, ``geoseg change``) run on, and how
many of their block tasks are in flight: one fact for both."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from geoseg.dask.session import DaskSession
    from geoseg.dask.stream import TaskSlots


@contextlib.contextmanager
def block_session(
    client: Any, scheduler: str | None, workers: int | None, max_in_flight: int | TaskSlots | None
) -> Iterator[tuple[DaskSession, int | TaskSlots]]:
    """A Dask session for block tasks (``client``, ``scheduler``, else ``workers`` local worker
    processes, default one per core) and how many may be in flight: ``max_in_flight``, else
    twice its threads and at least 4."""
    from geoseg.dask.session import cpu_count, dask_session

    with dask_session(client, scheduler, workers or cpu_count(), processes=True) as session:
        yield session, max_in_flight or max(4, 2 * session.threads)
