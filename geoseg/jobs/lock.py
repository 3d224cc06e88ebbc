"""A job's output folder, locked for that job alone."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from geoseg.errors import JobLockedError


@contextlib.contextmanager
def job_lock(folder: Path, job_path: Path) -> Iterator[None]:
    """The output folder, locked for this job alone: one folder, one writer. Single predict and
    vectorize runs share the same lock, so a job never removes a live run's temporary files."""
    from geoseg.errors import FolderLockedError
    from geoseg.fs import folder_lock

    folder.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(folder, exclusive=True, what=f"job {job_path.name}"):
            yield
    except FolderLockedError as exc:
        raise JobLockedError(str(exc)) from None
