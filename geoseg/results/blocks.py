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
    """A Dask session for block tasks and how many may be in flight: ``max_in_flight``, else
    twice its threads and at least 4.

    ``client`` or ``scheduler`` when given; with ``workers``, that many local worker processes;
    else one worker in this process with a thread per core: the block work (GDAL's reads, numpy's
    comparisons and sums) releases the GIL, and a process cluster's start (about 3 s) and close
    would cost more than counting a 16,384² raster (docs/benchmarks.md, Stats)."""
    from geoseg.dask.session import dask_session

    local = workers is not None
    with dask_session(client, scheduler, workers, processes=local, dashboard=local) as session:
        yield session, max_in_flight or max(4, 2 * session.threads)
