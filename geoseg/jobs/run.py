"""``geoseg batch``: any job file, dispatched by its kind, the one place that knows all three:
a recipe (``steps``: :mod:`geoseg.jobs.recipe`), a map (``map``: :mod:`geoseg.jobs.map_job`)
or a job of scenes (:mod:`geoseg.jobs.batch`)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from geoseg.jobs.batch.scenes import run_scene_job
from geoseg.jobs.job_file import read_job_file
from geoseg.jobs.map_job import run_map_job
from geoseg.jobs.recipe import run_recipe
from geoseg.jobs.report import BatchReport


def run_batch(
    job_path: str | os.PathLike[str],
    force: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    client: Any = None,
    echo: Callable[[str], Any] = lambda s: None,
    overwrite: bool = False,
    verbose: bool = False,
    progress: bool = False,
) -> BatchReport:
    """Run a prediction job (or a recipe job with ``steps``, or a map job with ``map``) and
    return its report.

    Several scenes run at once on one Dask client (the job's ``concurrency``), their tasks
    drawing on one in-flight budget. ``echo`` receives a recipe's step lines and, when
    ``verbose``, a line per scene (start, done, PART, skip, FAIL); ``verbose`` also shows the
    local workers' logs. ``progress`` draws the whole job's line (scenes done / running / left,
    MP/s, time left) on stderr. The report replaces an earlier report of the same job; any
    other existing file only with ``overwrite``, and never a scene or another output."""
    t0 = time.perf_counter()
    doc = read_job_file(job_path)
    if isinstance(doc, dict) and "steps" in doc:
        run_recipe(job_path, echo=echo, doc=doc)
        return BatchReport(str(job_path), [], time.perf_counter() - t0)
    if isinstance(doc, dict) and "map" in doc:  # one region from many scenes
        return run_map_job(job_path, force, client, echo, verbose, progress, doc=doc)
    return run_scene_job(
        job_path, doc, force, report_path, client, echo, overwrite, verbose, progress, t0
    )
