"""Resuming a job: a scene's record (written last) and whether the scene is done with this job,
model and geoseg version."""

from __future__ import annotations

import contextlib
import glob
import json
from pathlib import Path
from typing import Any

from geoseg.jobs.batch.job import Job, outputs_for, record_path
from geoseg.raster.scenes import file_token
from geoseg.version import __version__


def expected_record(job: Job, scene: str, model_sha: str) -> dict[str, Any]:
    """The record a scene done with this job, model and geoseg has, as JSON stores it (lists,
    not tuples), so it compares equal to the record file."""
    record = {
        "scene": {"path": scene, "content": file_token(scene)},
        "model_sha256": model_sha,
        "predict": job.predict,
        "vector": job.vector,
        "geoseg_version": __version__,
        "stats": job.stats,
        "quicklook": job.quicklook,
    }
    return dict(json.loads(json.dumps(record)))


def is_done(job: Job, scene: str, model_sha: str) -> bool:
    """True when the scene's record matches and every output it lists exists."""
    outs = outputs_for(job, scene)
    rec = record_path(outs["classes"])
    try:
        stored = json.loads(rec.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = expected_record(job, scene, model_sha)
    if stored.get("partial"):
        return False  # written with holes under on_error: skip; tried again on every run
    return all(stored.get(k) == v for k, v in want.items()) and all(
        _exists(job, p) for p in outs.values()
    )


def _exists(job: Job, path: Path) -> bool:
    """Whether an output is there: on disk, or on the job's object store."""
    if job.remote is None:
        return path.exists()
    return path.relative_to(job.folder).as_posix() in job.remote_names


def remove_stale_parts(outs: dict[str, Path]) -> None:
    """Hidden temporary files left by a killed run of this scene (safe: no live run can own them
    while this job holds the folder's lock)."""
    for p in [*outs.values(), record_path(outs["classes"])]:
        for stale in p.parent.glob(f".{glob.escape(p.name)}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()
