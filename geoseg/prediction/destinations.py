"""Where predict's rasters go: local files, ``s3://`` objects, or a folder (or prefix) of cells;
checked before any work, and published at the end.

A local output is written beside itself and renamed into place. An object-store output is made
in a private local staging folder the same way and uploaded once complete, each object in one
request (a reader sees the whole object or the one before, never part of one). With ``--cells``
the output is a folder that geoseg owns (it holds :data:`CELLS_MARKER`): the workers publish
the cells into it, the client the mosaics and the STAC collection.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from geoseg.errors import OutputError
from geoseg.fs import check_output_path
from geoseg.objectstore.urls import is_s3_url as is_s3

#: The file that marks a folder of cells as geoseg's (a rerun resumes it; nothing else is touched).
CELLS_MARKER = ".geoseg-cells.json"
#: Raster names, in the order a cell task makes them; folders of a cells output are named so.
RASTERS = ("classes", "probabilities", "confidence")


@dataclass
class Destinations:
    """Each raster's final place (a path or URL, as given) and where it is written locally.

    ``staging``: the private local folder an object-store output is made in (None for local
    outputs); :meth:`cleanup` removes it."""

    output: str
    probabilities: str | None
    confidence: str | None
    cells: bool = False
    staging: Path | None = None
    local: dict[str, Path] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return is_s3(self.output)

    @property
    def output_path(self) -> Path:
        return self.local["classes"]

    @property
    def probabilities_path(self) -> Path | None:
        return self.local.get("probabilities")

    @property
    def confidence_path(self) -> Path | None:
        return self.local.get("confidence")

    def final(self, name: str) -> str:
        """The final place of raster ``name`` (single-COG mode)."""
        return {
            "classes": self.output,
            "probabilities": self.probabilities,
            "confidence": self.confidence,
        }[name] or ""

    def cell_destination(self, name: str, stem: str) -> str:
        """Where the worker publishes raster ``name`` of cell ``stem`` (cells mode)."""
        base = self.output.rstrip("/")
        return (
            f"{base}/{name}/{stem}.tif"
            if self.remote
            else str(Path(self.output) / name / f"{stem}.tif")
        )

    def upload(self, staged: list[tuple[Path, str]], overwrite: bool) -> None:
        """Upload each staged local file to its URL (object-store outputs); without
        ``overwrite`` an object that appeared meanwhile is not replaced."""
        from geoseg.objectstore.uploads import upload_file

        for local, url in staged:
            if local.exists():
                upload_file(local, url, overwrite=overwrite)

    def cleanup(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


def check_destinations(
    output: str | os.PathLike[str],
    probabilities: str | os.PathLike[str] | None,
    confidence: str | os.PathLike[str] | None,
    cells: int | None,
    overwrite: bool,
) -> Destinations:
    """Check every output place before any work (free, or ``overwrite``; reachable, writable)
    and decide where each raster is written locally."""
    out = str(output)
    dest = Destinations(
        out,
        str(probabilities) if probabilities else None,
        str(confidence) if confidence else None,
        cells=cells is not None,
    )
    if cells is not None:
        return _check_cells(dest, overwrite)
    wanted = {"classes": out, "probabilities": dest.probabilities, "confidence": dest.confidence}
    what = {
        "classes": "output",
        "probabilities": "probabilities output",
        "confidence": "confidence output",
    }
    for name, place in wanted.items():
        if place is None:
            continue
        if is_s3(place):
            from geoseg.objectstore.checks import check_s3_output

            check_s3_output(place, overwrite, what[name])
            if dest.staging is None:
                dest.staging = Path(tempfile.mkdtemp(prefix="geoseg-staging-"))
            dest.local[name] = dest.staging / f"{name}.tif"
        else:
            dest.local[name] = check_output_path(place, overwrite, what[name])
    return dest


def _check_cells(dest: Destinations, overwrite: bool) -> Destinations:
    """A folder of cells: new, or one geoseg made (it resumes); never a file or someone else's."""
    names = ["classes"] + [
        n for n, v in (("probabilities", dest.probabilities), ("confidence", dest.confidence)) if v
    ]
    if dest.remote:
        from geoseg.objectstore.checks import check_s3_folder

        if not dest.output.endswith("/"):
            dest.output += "/"
        check_s3_folder(dest.output, overwrite, CELLS_MARKER)
        dest.staging = Path(tempfile.mkdtemp(prefix="geoseg-staging-"))
        for n in names:
            dest.local[n] = dest.staging / n
        return dest
    folder = Path(dest.output)
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"--cells writes a folder, and {folder} is a file; give a folder name (new, or one "
            "geoseg wrote cells into before)"
        )
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CELLS_MARKER).exists():
        raise OutputError(
            f"{folder} holds files geoseg did not write (no {CELLS_MARKER}); give a new or empty "
            "folder for the cells"
        )
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder's parent {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (folder.is_dir() and not os.access(folder, os.W_OK)):
        raise OutputError(
            f"cannot write into {folder}; check its permissions or choose another folder"
        )
    for n in names:
        dest.local[n] = folder / n
    return dest


def skipped_report_path(output: Path) -> Path:
    """Where the windows written as nodata under ``on_error="skip"`` are listed."""
    return output.with_name(output.name + ".skipped.json")
