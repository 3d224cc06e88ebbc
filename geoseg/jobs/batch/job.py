"""A prediction job (scenes, model, output folder and pattern, sections) and the paths of each
scene's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.options import (
    PredictOptions,
    VectorOptions,
    job_schema,
)
from geoseg.results.scene import STATS_SCHEMA

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
    #: ``s3://`` output folder (``folder`` is then its local staging mirror; geoseg.jobs.batch.store)
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
