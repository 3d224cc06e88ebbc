"""Scheduled batch jobs: segment many scenes once each, resumably, from a YAML job file.

A scene counts as done when its sidecar record exists and matches (scene path, size and
modification time, the model's content hash, the options, the geoseg version). The record is
written last and atomically, after every output has been renamed into place, so a job killed at
any moment and started again redoes exactly the unfinished scenes. A lock file keeps two runs
of one job apart. One failing scene does not stop the others.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from geoseg.errors import GeosegError, JobError, JobLockedError, first_line
from geoseg.fs import write_json_atomic
from geoseg.jobs.job_file import check_schema, check_values, read_job_file
from geoseg.options import (
    VECTOR_FORMAT_NAMES,
    PredictOptions,
    VectorOptions,
    job_schema,
)
from geoseg.paths import is_virtual
from geoseg.raster.scenes import file_token
from geoseg.results.scene import STATS_SCHEMA
from geoseg.version import __version__

#: Keys of a prediction job and the types they take (None: free-form checked elsewhere).
SCHEMA: dict[str, Any] = {
    "description": str,
    "scenes": list,
    "manifest": str,
    "model": str,
    "scheduler": str,
    "workers": int,
    "concurrency": "int|auto",
    "output": {"folder": str, "pattern": str},
    # derived from the options dataclasses, so a new predict or vector option is a job key too
    "predict": {**job_schema(PredictOptions), "probabilities": bool, "confidence": bool},
    "vector": {"format": str, **job_schema(VectorOptions)},
    "stats": STATS_SCHEMA,
    "quicklook": bool,
}
RECORD_SUFFIX = ".geoseg.json"


@dataclass
class Job:
    """A validated prediction job."""

    path: Path
    scenes: list[str]
    model: str | None
    folder: Path
    pattern: str
    predict: dict[str, Any]
    vector: dict[str, Any] | None
    scheduler: str | None
    workers: int | None
    concurrency: int | str = "auto"
    stats: dict[str, Any] | None = None
    quicklook: bool = True
    #: ``s3://`` output folder (``folder`` is then its local staging mirror; geoseg.jobs.batch_store)
    remote: str | None = None
    #: objects already under ``remote`` (names relative to it), for the resume check
    remote_names: set[str] = field(default_factory=set)

    @property
    def predict_options(self) -> PredictOptions:
        """The ``predict`` section as typed options, built once per job (``predict`` stays the
        section as written: the scene records hold it)."""
        if self._predict_options is None:
            opts = {
                k: v for k, v in self.predict.items() if k not in ("probabilities", "confidence")
            }
            self._predict_options = PredictOptions.from_keywords(None, **opts)
        return self._predict_options

    _predict_options: PredictOptions | None = field(default=None, repr=False, compare=False)


@dataclass
class SceneOutcome:
    scene: str
    status: str  # done | partial (written with nodata holes; redone next run) | skipped | failed
    error: str | None = None
    megapixels: float = 0.0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    class_areas: dict[str, Any] | None = None
    skipped_tiles: int = 0


@dataclass
class BatchReport:
    job: str
    outcomes: list[SceneOutcome]
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def megapixels(self) -> float:
        return sum(o.megapixels for o in self.outcomes if o.status in ("done", "partial"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "geoseg_version": __version__,
            "seconds": round(self.seconds, 3),
            "done": self.count("done"),
            "partial": self.count("partial"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "megapixels": round(self.megapixels, 3),
            "megapixels_per_second": round(self.megapixels / self.seconds, 4)
            if self.seconds
            else None,
            "scenes": [o.__dict__ for o in self.outcomes],
        }

    def table(self) -> str:
        lines = [f"{'status':<8} {'MP':>8} {'s':>7}  scene"]
        for o in self.outcomes:
            lines.append(
                f"{o.status:<8} {o.megapixels:>8.2f} {o.seconds:>7.1f}  {o.scene}"
                + (f"\n{'':<27}{o.error}" if o.error else "")
            )
        mps = self.megapixels / self.seconds if self.seconds else 0.0
        lines.append(
            f"done {self.count('done')}, partial {self.count('partial')}, skipped {self.count('skipped')}, failed {self.count('failed')}; "
            f"{self.megapixels:.2f} MP in {self.seconds:.1f} s ({mps:.3f} MP/s)"
        )
        return "\n".join(lines)


#: the job-file validator's parts, under their old names (geoseg.jobs.map_job uses them)
_check = check_schema
_check_values = check_values


def _resolve(base: Path, text: str) -> str:
    if is_virtual(text) or os.path.isabs(text):
        return text
    return str((base / text).resolve())


def load_job(path: str | os.PathLike[str], doc: Any = None) -> Job:
    """Read (unless its parsed ``doc`` is given) and validate a prediction job; every problem is
    reported in one error, before any work."""
    from geoseg.models.checkpoint import BUILTIN_MODELS

    p = Path(path)
    doc = read_job_file(path) if doc is None else doc
    if not isinstance(doc, dict):
        raise JobError(f"{path}: a job file is a mapping (scenes, model, output, ...)")
    problems: list[str] = []
    _check(doc, SCHEMA, "", problems)
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
        full = _resolve(base, pat)
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
        mpath = Path(_resolve(base, manifest))
        if not mpath.exists():
            problems.append(f"manifest: {manifest!r} not found")
        else:
            for n, line in enumerate(mpath.read_text().splitlines(), start=1):
                line = line.strip()
                if line and not line.startswith("#"):
                    full = _resolve(mpath.parent, line)
                    if not (is_virtual(full) or os.path.exists(full)):
                        problems.append(f"manifest line {n}: {line!r} not found")
                    else:
                        scenes.append(full)
                        places.setdefault(full, f"manifest line {n}")
    if not patterns and not manifest:
        problems.append("scenes: give 'scenes' (paths or globs) or 'manifest' (a file of paths)")
    model = doc.get("model")
    if isinstance(model, str) and model not in BUILTIN_MODELS:
        model = _resolve(base, model)
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
    _check_values(
        predict, PredictOptions, "predict", problems, extra=("probabilities", "confidence")
    )
    _check_values(vector, VectorOptions, "vector", problems, extra=("format",))
    concurrency = doc.get("concurrency", "auto")
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency < 1:
        problems.append(
            f"concurrency: scenes at once must be 1 or more (or 'auto'), not {concurrency}"
        )
    from geoseg.jobs.batch_store import check_folder_url, staging_folder

    try:
        remote = check_folder_url(folder)
    except GeosegError as exc:
        problems.append(f"output.folder: {first_line(exc)}")
        remote = None
    local_folder = staging_folder(remote) if remote else Path(_resolve(base, folder))
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


def outputs_for(job: Job, scene: str) -> dict[str, Path]:
    """Output paths of one scene: classes, and probabilities / confidence / polygons / STAC item
    as asked. With ``predict.cells`` the rasters are a folder of cells named like the class
    raster without ``.tif``, and ``classes`` (``probabilities``, ``confidence``) are its VRT mosaics."""
    stem = Path(scene).stem
    classes = job.folder / job.pattern.format(stem=stem)
    base = classes.name[: -len(".tif")]
    out = {"classes": classes, "stac": classes.with_name(base + ".stac.json")}
    cells = job.predict.get("cells")
    if cells:
        out["classes"] = classes.with_name(base) / "classes.vrt"
    for name in ("probabilities", "confidence"):
        if job.predict.get(name):
            # the last "classes" in the name becomes "probabilities" (x-classes -> x-probabilities)
            head, found, tail = base.rpartition("classes")
            out[name] = (
                classes.with_name(base) / f"{name}.vrt"
                if cells
                else classes.with_name(f"{head}{name}{tail}.tif" if found else f"{base}-{name}.tif")
            )
    if job.vector is not None:
        out["vector"] = classes.with_name(base + "." + job.vector.get("format", "gpkg"))
    from geoseg.results.scene import scene_outputs

    out.update(scene_outputs(classes, job.stats, job.quicklook))
    return out


def record_path(classes: Path) -> Path:
    return classes.with_name(classes.name + RECORD_SUFFIX)


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


def remove_stale_parts(outs: dict[str, Path]) -> None:
    """Hidden temporary files left by a killed run of this scene (safe: no live run can own them
    while this job holds the folder's lock)."""
    for p in [*outs.values(), record_path(outs["classes"])]:
        for stale in p.parent.glob(f".{glob.escape(p.name)}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()


def stac_item(
    scene: str,
    outs: dict[str, Path],
    model_name: str,
    model_sha: str,
    classes: list[Any],
    source_item: str | None = None,
) -> dict[str, Any]:
    """A STAC 1.0 Item for one scene's outputs, with the class raster and polygons as assets, and
    a ``derived_from`` link to the scene's own STAC item when it was given as one."""
    import rasterio
    from rasterio.warp import transform_bounds, transform_geom

    with rasterio.open(outs["classes"]) as src:
        bounds, crs, shape, transform = src.bounds, src.crs, src.shape, src.transform
    if crs is not None:
        wgs = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
        geom = transform_geom(
            crs,
            "EPSG:4326",
            {
                "type": "Polygon",
                "coordinates": [
                    [
                        (bounds.left, bounds.bottom),
                        (bounds.right, bounds.bottom),
                        (bounds.right, bounds.top),
                        (bounds.left, bounds.top),
                        (bounds.left, bounds.bottom),
                    ]
                ],
            },
        )
    else:
        wgs, geom = None, None
    stamp = _scene_time(scene)
    assets: dict[str, Any] = {
        "classes": {
            "href": _href(outs["classes"], outs),
            "type": media_type(outs["classes"]),
            "roles": ["data"],
            "title": "class raster",
            "classification:classes": [
                {"value": c.value, "name": c.name, "color_hint": "%02X%02X%02X" % tuple(c.color)}
                for c in classes
            ],
        }
    }
    if "confidence" in outs:
        assets["confidence"] = {
            "href": _href(outs["confidence"], outs),
            "roles": ["data"],
            "type": media_type(outs["confidence"]),
            "title": "probability of the winning class (1-255; 0 nodata)",
        }
    if "probabilities" in outs:
        assets["probabilities"] = {
            "href": _href(outs["probabilities"], outs),
            "roles": ["data"],
            "type": media_type(outs["probabilities"]),
            "title": "class probabilities (0-255)",
        }
    if "vector" in outs:
        assets["polygons"] = {
            "href": outs["vector"].name,
            "roles": ["data"],
            "title": "class polygons",
        }
    props: dict[str, Any] = {
        "datetime": stamp,
        "geoseg:model": model_name,
        "geoseg:model_sha256": model_sha,
        "geoseg:version": __version__,
        "geoseg:source": scene,
    }
    if crs is not None:
        props.update(
            {
                "proj:wkt2": crs.to_wkt(),
                "proj:shape": list(shape),
                "proj:transform": list(transform)[:6],
            }
        )
        if crs.to_epsg():
            props["proj:epsg"] = crs.to_epsg()
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
        ],
        "id": outs["classes"].stem,
        "geometry": geom,
        "bbox": list(wgs) if wgs else None,
        "properties": props,
        "assets": assets,
        "links": [
            {
                "rel": "derived_from",
                "href": source_item,
                "type": "application/geo+json",
                "title": "source scene",
            }
        ]
        if source_item
        else [],
    }


def _href(path: Path, outs: dict[str, Path]) -> str:
    """An output's path relative to the STAC item (a mosaic inside a folder of cells too)."""
    return os.path.relpath(path, outs["stac"].parent)


def media_type(path: Path) -> str:
    """The media type of a raster output: a COG, or a cells folder's VRT mosaic."""
    return (
        "application/xml"
        if path.suffix == ".vrt"
        else "image/tiff; application=geotiff; profile=cloud-optimized"
    )


def _scene_time(scene: str) -> str:
    """The scene file's modification time, ISO 8601 UTC: stable across reruns."""
    try:
        mtime_ns = os.stat(scene).st_mtime_ns
    except OSError:
        mtime_ns = 0
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    """Run a prediction job (or a recipe job with ``steps``) and return its report.

    Several scenes run at once on one Dask client (the job's ``concurrency``), their tasks
    drawing on one in-flight budget. ``echo`` receives a recipe's step lines and, when
    ``verbose``, a line per scene (start, done, PART, skip, FAIL); ``verbose`` also shows the
    local workers' logs. ``progress`` draws the whole job's line (scenes done / running / left,
    MP/s, time left) on stderr. The report replaces an earlier report of the same job; any
    other existing file only with ``overwrite``, and never a scene or another output."""
    t0 = time.perf_counter()
    doc = read_job_file(job_path)
    if isinstance(doc, dict) and "steps" in doc:
        from geoseg.jobs.recipe import run_recipe

        run_recipe(job_path, echo=echo, doc=doc)
        return BatchReport(str(job_path), [], time.perf_counter() - t0)
    if isinstance(doc, dict) and "map" in doc:  # one region from many scenes (geoseg.jobs.map_job)
        from geoseg.jobs.map_job import run_map_job

        report: BatchReport = run_map_job(job_path, force, client, echo, verbose, progress, doc=doc)
        return report
    job = load_job(job_path, doc)
    from geoseg.models.load import read_model_config
    from geoseg.progress import JobProgress

    report_file = Path(report_path) if report_path else job.folder / "batch-report.json"
    _check_report_path(job, report_file, overwrite)
    from geoseg.results.report import check_report_page, write_report
    from geoseg.results.report import report_path as html_path

    check_report_page(html_path(report_file), str(job.path), overwrite)
    model = read_model_config(job.model)
    if job.remote is not None:
        from geoseg.jobs.batch_store import prepare

        job.remote_names = prepare(job.remote, job.folder, RECORD_SUFFIX)
    bar = JobProgress(len(job.scenes), quiet=not progress)
    say: Callable[[str], Any] = (
        (lambda s: None) if not verbose else (bar.message if progress else echo)
    )
    with job_lock(job.folder, job.path):
        from geoseg.dask.session import inference_session

        with inference_session(client, job.scheduler, job.workers, verbose) as session:
            outcomes = _run_scenes(job, model, force, session, bar, say)
    bar.close()
    report = BatchReport(str(job.path), outcomes, time.perf_counter() - t0)
    write_json_atomic(report_file, report.as_dict())
    write_report(report.as_dict(), job.folder, html_path(report_file))
    if job.remote is not None:
        from geoseg.jobs.batch_store import push

        push(job.remote, job.folder, [report_file, html_path(report_file)])
    return report


def scenes_at_once(concurrency: int | str, threads: int) -> tuple[int, bool]:
    """How many scenes may be in flight, and whether more start only when the running ones run
    out of tasks to submit (``auto``: enough scenes to fill every slot, plus scenes finishing)."""
    if concurrency == "auto":
        return 3 * max(1, threads) + 1, True
    return max(1, int(concurrency)), False


def _run_scenes(
    job: Job, model: Any, force: bool, session: Any, bar: Any, say: Callable[[str], Any]
) -> list[SceneOutcome]:
    """Every scene of the job, several at once in client threads, their tile and polygon tasks
    sharing one in-flight budget of 2 tasks per worker thread; outcomes in job order.

    Ctrl-C (KeyboardInterrupt here) cancels the budget: every scene in flight stops, aborts its
    temporary files and leaves nothing at its output paths; then the interrupt propagates.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from geoseg.dask.stream import TaskSlots

    slots = TaskSlots(2 * session.threads)
    cap, auto = scenes_at_once(job.concurrency, session.threads)
    opening = [0]  # scenes admitted but not yet streaming tasks (their demand is unknown)
    lock = threading.Lock()
    outcomes: dict[int, SceneOutcome] = {}
    running: dict[Future[SceneOutcome], int] = {}
    queue = list(enumerate(job.scenes))[::-1]

    def hungry() -> bool:
        """Whether the running scenes already have enough tasks waiting to fill the budget."""
        with lock:
            return opening[0] > 0 or slots.demand >= slots.size

    def opened() -> None:
        with lock:
            opening[0] -= 1

    pool = ThreadPoolExecutor(max_workers=cap, thread_name_prefix="geoseg-scene")
    try:
        while queue or running:
            while queue and len(running) < cap and not (auto and running and hungry()):
                i, scene = queue.pop()
                if not force and is_done(job, scene, model.sha256):
                    say(f"skip  {scene} (outputs match their record)")
                    outcomes[i] = SceneOutcome(scene, "skipped")
                    bar.finished("skipped")
                    continue
                with lock:
                    opening[0] += 1
                bar.started()
                running[
                    pool.submit(_one_scene, job, scene, model, session, slots, bar, say, opened)
                ] = i
            if running:
                finished, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                for fut in finished:
                    outcome = fut.result()
                    outcomes[running.pop(fut)] = outcome
                    bar.finished(outcome.status)
    except BaseException:
        slots.cancel()
        wait(list(running))
        raise
    finally:
        pool.shutdown(wait=True)
    return [outcomes[i] for i in sorted(outcomes)]


def _check_report_path(job: Job, report: Path, overwrite: bool) -> None:
    """Refuse a report path that holds something other than this job's last report (unless
    ``overwrite``), or that is a scene, the model or a scene's output."""
    from geoseg.fs import check_distinct_paths, check_output_path

    previous_report = False
    if report.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            previous_report = json.loads(report.read_text()).get("job") == str(job.path)
    if not previous_report:
        if not report.parent.exists() and report.parent == job.folder:
            return  # the output folder is created by the run
        check_output_path(report, overwrite, "batch report")
    outputs: dict[str, Any] = {"batch report": report}
    inputs: dict[str, Any] = {"job file": job.path, "model file": job.model}
    for i, scene in enumerate(job.scenes):
        inputs[f"scene {scene}"] = scene
        for kind, out in outputs_for(job, scene).items():
            inputs[f"{kind} output of {Path(scene).name}"] = out
    check_distinct_paths(inputs, outputs)


def _one_scene(
    job: Job,
    scene: str,
    model: Any,
    session: Any,
    slots: Any,
    bar: Any,
    say: Callable[[str], Any],
    opened: Callable[[], None],
) -> SceneOutcome:
    """Predict, describe and record one scene (in a client thread, beside other scenes);
    ``opened`` is called once the scene's tasks are known (or it failed before that)."""
    from geoseg.prediction import execute
    from geoseg.prediction.destinations import skipped_report_path
    from geoseg.prediction.plan import plan_predict

    t = time.perf_counter()
    try:
        outs = outputs_for(job, scene)
        remove_stale_parts(outs)
        rec = record_path(outs["classes"])
        with contextlib.suppress(FileNotFoundError):
            rec.unlink()  # the outputs are about to change: they no longer match any record
        say(f"start {scene}")
        vector_opts = None
        if job.vector is not None:
            vector_opts = {k: v for k, v in job.vector.items() if k != "format"}
            # the scene's own time, so a rerun writes byte-identical GeoPackages
            vector_opts["timestamp"] = _scene_time(scene)
            if "skip_class" in vector_opts:
                vector_opts["skip_classes"] = tuple(vector_opts.pop("skip_class"))
        try:
            # with cells, the scene's output is the folder its mosaics are in
            target = outs["classes"].parent if job.predict_options.cells else outs["classes"]
            plan = plan_predict(
                scene,
                target,
                model,
                job.predict_options,
                outs.get("probabilities"),
                outs.get("vector"),
                overwrite=True,
                vector_options=vector_opts,
                confidence=outs.get("confidence"),
            )
            progress = bar.scene(plan.scene.pixels)
        finally:
            opened()
        result = execute(
            plan,
            session,
            progress,
            max_in_flight=slots,
            overwrite=True,
            vector_options=vector_opts,
            started=t,
        )
        if slots.cancelled:
            raise KeyboardInterrupt("the job was interrupted")
        from geoseg.results.scene import add_class_counts, json_areas, scene_results

        areas = scene_results(outs, job.stats, session.client, slots)
        write_json_atomic(
            outs["stac"],
            add_class_counts(
                stac_item(scene, outs, model.name, model.sha256, model.classes, result.stac_item),
                areas,
                outs.get("quicklook"),
            ),
        )
        record = expected_record(job, scene, model.sha256)
        record["outputs"] = {k: p.name for k, p in outs.items()}
        if result.skipped:
            record["partial"] = {
                "skipped_windows": len(result.skipped),
                "report": skipped_report_path(outs["classes"]).name,
            }
        write_json_atomic(rec, record)
        if (
            job.remote is not None
        ):  # outputs first, the record last: a record there means all is there
            from geoseg.jobs.batch_store import push

            skipped_file = skipped_report_path(outs["classes"])
            files = [p.parent if p.parent != job.folder else p for p in outs.values()]
            files += [skipped_file] if skipped_file.exists() else []
            push(job.remote, job.folder, [*dict.fromkeys(files), rec], keep=(rec,))
    except GeosegError as exc:
        say(f"FAIL  {scene}: {first_line(exc)}")
        return SceneOutcome(scene, "failed", first_line(exc), 0.0, time.perf_counter() - t)
    except Exception as exc:  # one bad scene must not stop the others
        msg = f"{type(exc).__name__}: {first_line(str(exc))}"
        say(f"FAIL  {scene}: {msg}")
        return SceneOutcome(scene, "failed", msg, 0.0, time.perf_counter() - t)
    if result.skipped:
        msg = (
            f"{len(result.skipped)} window(s) written as nodata (listed in "
            f"{skipped_report_path(outs['classes']).name}); the next run redoes this scene"
        )
        say(f"PART  {scene}: {msg}")
        return SceneOutcome(
            scene,
            "partial",
            msg,
            result.pixels / 1e6,
            time.perf_counter() - t,
            [p.name for p in outs.values()],
            json_areas(areas),
            len(result.skipped),
        )
    say(f"done  {scene} ({result.pixels / 1e6:.2f} MP in {result.seconds:.1f} s)")
    return SceneOutcome(
        scene,
        "done",
        None,
        result.pixels / 1e6,
        time.perf_counter() - t,
        [p.name for p in outs.values()],
        json_areas(areas),
    )
