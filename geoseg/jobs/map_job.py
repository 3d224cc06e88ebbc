"""A map as a batch job: ``geoseg batch`` runs a job file with a ``map`` section (the keys of
``geoseg map``) resumably, like a job of scenes.

The map counts as done when its record (``OUTPUT.geoseg.json``, written last) matches the
plan's content (scenes' files, grid, AOI), the model's hash, the options and the geoseg
version, and the output exists: a rerun skips it. A map written in cells (``predict: {cells:
N}``) that was stopped part-way keeps the cells it finished (:mod:`geoseg.prediction.cells_state`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from geoseg.errors import GeosegError, JobError, first_line
from geoseg.jobs.job_file import check_schema, check_values, read_job_file, resolve_path
from geoseg.jobs.lock import job_lock
from geoseg.jobs.report import BatchReport, SceneOutcome
from geoseg.options import MapOptions, PredictOptions, job_schema
from geoseg.version import __version__

#: The ``map`` section of a job file: ``geoseg map``'s scenes, output and options.
MAP_SCHEMA: dict[str, Any] = {"scenes": list, "output": str, **job_schema(MapOptions)}
#: A map job file's keys.
MAP_JOB_SCHEMA: dict[str, Any] = {
    "description": str,
    "map": MAP_SCHEMA,
    "model": str,
    "scheduler": str,
    "workers": int,
    "predict": job_schema(PredictOptions),
}


def run_map_job(
    job_path: str | os.PathLike[str],
    force: bool = False,
    client: Any = None,
    echo: Callable[[str], Any] = lambda s: None,
    verbose: bool = False,
    progress: bool = False,
    doc: Any = None,
) -> BatchReport:
    """Run a map job file (see the module; ``doc``: its parsed YAML, when read already) and
    return its :class:`geoseg.jobs.report.BatchReport` (one outcome: the map)."""
    from geoseg.fs import write_json_atomic
    from geoseg.mapping import run_map
    from geoseg.mapping.plan import plan_map

    t0 = time.perf_counter()
    path = Path(job_path)
    doc = read_job_file(path) if doc is None else doc
    problems: list[str] = []
    check_schema(doc, MAP_JOB_SCHEMA, "", problems)
    section = doc.get("map") if isinstance(doc, dict) else None
    if not isinstance(section, dict) or not section.get("scenes") or not section.get("output"):
        problems.append(
            "map: give scenes (paths, globs, STAC items or collections, manifests) and output"
        )
    check_values(section, MapOptions, "map", problems, extra=("scenes", "output"))
    check_values(doc.get("predict") or {}, PredictOptions, "predict", problems)
    if problems:
        raise JobError(f"{job_path}: " + "; ".join(problems))
    assert isinstance(section, dict)
    base = path.resolve().parent
    scenes = [resolve_path(base, str(s)) for s in section["scenes"]]
    output = (
        section["output"] if "://" in section["output"] else resolve_path(base, section["output"])
    )
    aoi = section.get("aoi")
    mopts = MapOptions(
        crs=section.get("crs"),
        resolution=section.get("resolution"),
        order=section.get("order", "given"),
        aoi=resolve_path(base, aoi) if aoi else None,
    )
    given: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) and k != "bands" else v)
        for k, v in (doc.get("predict") or {}).items()
        if v is not None
    }
    popts = PredictOptions(**given)
    model = doc.get("model")
    if (
        isinstance(model, str)
        and not model.startswith("builtin")
        and os.path.exists(resolve_path(base, model))
    ):
        model = resolve_path(base, model)
    record_file = Path(output.rstrip("/") + ".geoseg.json") if "://" not in output else None
    record_old = _read_record(record_file)
    outcome = SceneOutcome(output, "done")
    folder = record_file.parent if record_file is not None else base
    with job_lock(folder, path):
        try:
            # an earlier run of this job wrote the output: it may be replaced
            ours = record_old is not None or force
            mplan = plan_map(scenes, output, model, popts, mopts, overwrite=ours)
            record = {
                "map": mplan.predict.scene.path,
                "model_sha256": mplan.predict.model.sha256,
                "predict": repr(popts),
                "geoseg_version": __version__,
            }
            if not force and record_old == record and os.path.exists(output):
                outcome.status = "skipped"
                echo(f"skip {output}: done with these scenes, model and options")
            else:
                echo(f"map {output} from {len(mplan.scenes)} scenes")
                result = run_map(
                    mplan,
                    quiet=not progress,
                    verbose=verbose,
                    client=client,
                    scheduler=doc.get("scheduler"),
                    workers=doc.get("workers"),
                    overwrite=ours,
                )
                outcome.megapixels = result.pixels / 1e6
                outcome.outputs = [str(result.output)]
                outcome.status = "partial" if result.skipped else "done"
                if record_file is not None and not result.skipped:
                    write_json_atomic(record_file, record)
        except GeosegError as exc:
            outcome.status, outcome.error = "failed", first_line(exc)
    outcome.seconds = time.perf_counter() - t0
    return BatchReport(str(path), [outcome], time.perf_counter() - t0)


def _read_record(path: Path | None) -> dict[str, Any] | None:
    import json

    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
