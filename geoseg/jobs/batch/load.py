"""Reading and validating a prediction job file: every problem, named by its place in the file,
in one error before any work."""

from __future__ import annotations

import glob
import os
import string
from pathlib import Path
from typing import Any

from geoseg.errors import GeosegError, JobError, first_line
from geoseg.jobs.batch.job import SCHEMA, Job, outputs_for, record_path
from geoseg.jobs.job_file import check_schema, check_values, read_job_file, resolve_path
from geoseg.options import (
    VECTOR_FORMAT_NAMES,
    PredictOptions,
    VectorOptions,
)
from geoseg.paths import is_virtual


def load_job(path: str | os.PathLike[str], doc: Any = None) -> Job:
    """Read (unless its parsed ``doc`` is given) and validate a prediction job; every problem is
    reported in one error, before any work."""
    from geoseg.models.checkpoint import BUILTIN_MODELS

    p = Path(path)
    doc = read_job_file(path) if doc is None else doc
    if not isinstance(doc, dict):
        raise JobError(f"{path}: a job file is a mapping (scenes, model, output, ...)")
    problems: list[str] = []
    check_schema(doc, SCHEMA, "", problems)
    base = p.resolve().parent
    scenes: list[str] = []
    places: dict[str, str] = {}  # scene -> where the job file names it
    globbed: set[str] = set()  # scenes matched by a glob, not named
    patterns = doc.get("scenes") or []
    if not isinstance(patterns, list):
        patterns = []
    for i, pat in enumerate(patterns):
        if not isinstance(pat, str):
            problems.append(f"scenes[{i}]: expected a path or glob, got {pat!r}")
            continue
        full = resolve_path(base, pat)
        if is_virtual(full):
            scenes.append(full)
            places.setdefault(full, f"scenes[{i}]")
            continue
        is_glob = any(ch in pat for ch in "*?[")
        matched = sorted(glob.glob(full)) if is_glob else ([full] if os.path.exists(full) else [])
        if not matched:
            problems.append(f"scenes[{i}]: {pat!r} matches no file")
        scenes.extend(matched)
        for m in matched:
            places.setdefault(m, f"scenes[{i}] ({Path(m).name})" if is_glob else f"scenes[{i}]")
            if is_glob:
                globbed.add(m)
    manifest = doc.get("manifest")
    if isinstance(manifest, str):
        mpath = Path(resolve_path(base, manifest))
        if not mpath.exists():
            problems.append(f"manifest: {manifest!r} not found")
        else:
            for n, line in enumerate(mpath.read_text().splitlines(), start=1):
                line = line.strip()
                if line and not line.startswith("#"):
                    full = resolve_path(mpath.parent, line)
                    if not (is_virtual(full) or os.path.exists(full)):
                        problems.append(f"manifest line {n}: {line!r} not found")
                    else:
                        scenes.append(full)
                        places.setdefault(full, f"manifest line {n}")
    if not patterns and not manifest:
        problems.append("scenes: give 'scenes' (paths or globs) or 'manifest' (a file of paths)")
    model = doc.get("model")
    if isinstance(model, str) and model not in BUILTIN_MODELS:
        model = resolve_path(base, model)
        if not os.path.isfile(model):
            problems.append(
                f"model: {doc['model']!r} is neither a file nor a built-in model "
                f"({', '.join(BUILTIN_MODELS)})"
            )
    out = doc.get("output") or {}
    folder = out.get("folder") if isinstance(out, dict) else None
    if not isinstance(folder, str):
        problems.append("output.folder: required")
        folder = "."
    pattern = (
        out.get("pattern", "{stem}-classes.tif") if isinstance(out, dict) else "{stem}-classes.tif"
    )
    pattern_problems = (
        _pattern_problems(pattern) if isinstance(pattern, str) else ["output.pattern: not text"]
    )
    problems.extend(p for p in pattern_problems if p not in problems)
    vector = doc.get("vector")
    if isinstance(vector, dict) and vector.get("format", "gpkg") not in VECTOR_FORMAT_NAMES:
        problems.append(
            f"vector.format: {vector.get('format')!r} is not one of {', '.join(VECTOR_FORMAT_NAMES)}"
        )
    elif isinstance(vector, dict):
        problems.extend(_vector_problems(vector, scenes))
    predict = doc.get("predict") or {}
    check_values(
        predict, PredictOptions, "predict", problems, extra=("probabilities", "confidence")
    )
    check_values(vector, VectorOptions, "vector", problems, extra=("format",))
    concurrency = doc.get("concurrency", "auto")
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency < 1:
        problems.append(
            f"concurrency: scenes at once must be 1 or more (or 'auto'), not {concurrency}"
        )
    from geoseg.jobs.batch.store import check_folder_url, staging_folder

    try:
        remote = check_folder_url(folder)
    except GeosegError as exc:
        problems.append(f"output.folder: {first_line(exc)}")
        remote = None
    local_folder = staging_folder(remote) if remote else Path(resolve_path(base, folder))
    job = Job(
        p,
        list(dict.fromkeys(scenes)),
        model,
        local_folder,
        str(pattern),
        dict(predict) if isinstance(predict, dict) else {},
        dict(vector) if isinstance(vector, dict) else None,
        doc.get("scheduler"),
        doc.get("workers"),
        concurrency if concurrency is not None else "auto",
    )
    from geoseg.results.scene import check_stats_section

    job.stats, stats_problems = check_stats_section(doc.get("stats"), base)
    problems.extend(stats_problems)
    job.quicklook = doc.get("quicklook", True) is not False
    job.remote = remote
    if not pattern_problems:
        job.scenes = _drop_own_outputs(job, places, globbed, problems)
        problems.extend(_collisions(job, places))
    if problems:
        raise JobError(f"{path}: " + "; ".join(problems))
    _ = job.predict_options  # built once, here: every scene uses this one
    return job


def _vector_problems(vector: dict[str, Any], scenes: list[str]) -> list[str]:
    """What the polygon format needs, checked before any scene is segmented: pyarrow for
    GeoParquet, and for GeoJSON scenes in EPSG:4326 (the options are checked as VectorOptions)."""
    from geoseg.errors import GeosegError
    from geoseg.vector.vectorize import check_vector_options

    name = "polygons." + str(vector.get("format", "gpkg"))
    try:
        check_vector_options(name)
    except GeosegError as exc:
        return [f"vector.format: {exc}"]
    if vector.get("format") != "geojson":
        return []
    import rasterio

    from geoseg.raster.read import no_georef_warning

    problems = []
    for scene in scenes:
        try:
            with no_georef_warning(), rasterio.open(scene) as src:
                crs = src.crs
        except Exception:  # noqa: BLE001 - an unreadable scene fails alone when its turn comes
            continue
        try:
            check_vector_options(name, crs, dst_crs=vector.get("dst_crs"))
        except GeosegError as exc:
            problems.append(f"vector.format: {Path(scene).name}: {exc}")
    return problems


def _pattern_problems(pattern: str) -> list[str]:
    """What is wrong with an output file-name pattern; only ``{stem}`` is filled in."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        return [
            f"output.pattern: {pattern!r} is not a valid pattern ({exc}); write {{stem}} where the "
            "scene's file name goes, and {{{{ }}}} for literal braces"
        ]
    problems = []
    unknown = sorted({f for f in fields if f != "stem"})
    if unknown:
        problems.append(
            f"output.pattern: unknown field(s) {', '.join('{' + f + '}' for f in unknown)} in "
            f"{pattern!r}; only {{stem}} (the scene's file name without extension) is filled in"
        )
    if "stem" not in fields or not pattern.endswith(".tif") or "/" in pattern:
        problems.append("output.pattern: a file name ending in .tif that contains {stem}")
    return problems


def _is_geoseg_raster(path: str) -> bool:
    """True for a class or probabilities raster geoseg wrote (it carries geoseg's class tags)."""
    import rasterio

    from geoseg.raster.read import no_georef_warning

    try:
        with no_georef_warning(), rasterio.open(path) as src:
            return "GEOSEG_MODEL" in src.tags()
    except Exception:  # noqa: BLE001 - not readable here: predict reports it as the scene's error
        return False


def _drop_own_outputs(
    job: Job, places: dict[str, str], globbed: set[str], problems: list[str]
) -> list[str]:
    """Scenes without geoseg's own outputs: a glob that also matches the output folder would
    otherwise segment last run's class rasters as scenes. Listed by name, such a file is an error."""
    produced: dict[str, tuple[str, str]] = {}
    for scene in job.scenes:
        for kind, out in outputs_for(job, scene).items():
            produced[os.path.realpath(out)] = (
                scene,
                f"the {kind} output of {places.get(scene, scene)}",
            )
    folder = os.path.realpath(job.folder)
    kept = []
    for scene in job.scenes:
        real = os.path.realpath(scene)
        source, owner = produced.get(real, (scene, None))
        if source == scene:
            owner = None  # a scene that is its own output: a collision, reported by _collisions
        in_folder = not is_virtual(scene) and os.path.dirname(real) == folder
        if scene in globbed and (owner is not None or (in_folder and _is_geoseg_raster(scene))):
            continue  # geoseg's own output, not a scene
        if owner is not None:
            problems.append(
                f"{places.get(scene, scene)}: {scene} is {owner}; list scenes only, or "
                "write the outputs to another output.folder"
            )
        kept.append(scene)
    return kept


def _collisions(job: Job, places: dict[str, str]) -> list[str]:
    """Every output name of every scene against all the others and against every input (scenes,
    model): two scenes writing one file, or an output replacing a scene, is refused up front."""
    from geoseg.fs import path_identity

    owners: dict[Any, str] = {}
    problems: list[str] = []

    def claim(path: str | Path, what: str) -> str | None:
        """Record ``path`` as ``what``; returns what already had it, if anything."""
        real, inode = path_identity(str(path))
        other = owners.get(real) or (owners.get(inode) if inode is not None else None)
        if other is None:
            owners[real] = what
            if inode is not None:
                owners[inode] = what
        return other

    for scene in job.scenes:
        if not is_virtual(scene):
            claim(scene, f"the scene of {places.get(scene, scene)}")
    if job.model is not None and os.path.isfile(job.model):
        claim(job.model, "the model file")
    for scene in job.scenes:
        outs = dict(outputs_for(job, scene))
        outs["record"] = record_path(outs["classes"])
        outs["skipped-tiles report"] = outs["classes"].with_name(
            outs["classes"].name + ".skipped.json"
        )
        for kind, out in outs.items():
            other = claim(out, f"the {kind} output of {places.get(scene, scene)}")
            if other:
                problems.append(
                    f"output: the {kind} output of {places.get(scene, scene)} ({out.name}) would "
                    f"overwrite {other}; change output.pattern or output.folder"
                )
    return problems
