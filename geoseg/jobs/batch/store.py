"""A batch job's output folder on an object store (``output: {folder: s3://bucket/prefix}``).

The job runs as on disk, in a local staging folder that mirrors the prefix; each scene's
outputs are uploaded as soon as the scene is done, its record last, so a record on the store
always describes outputs that are all there (the same resume rule as on disk: a rerun skips a
scene whose record matches and whose outputs exist). The local copies are removed once
uploaded: the staging folder holds one scene's outputs at a time, whatever the job's size.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from geoseg.errors import OutputError
from geoseg.objectstore.checks import check_s3_folder
from geoseg.objectstore.reads import list_keys, read_bytes
from geoseg.objectstore.uploads import upload_file
from geoseg.objectstore.urls import is_s3_url

#: Marks a prefix as a geoseg batch's output folder (written before any scene).
BATCH_MARKER = ".geoseg-batch.json"


def staging_folder(url: str) -> Path:
    """The local folder a job writing to ``url`` works in (private, one per prefix)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"geoseg-batch-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def prepare(url: str, staging: Path, record_suffix: str) -> set[str]:
    """Check the prefix (reachable, writable, geoseg's or empty), mark it as a batch's, fetch
    every scene record into ``staging`` and return the names of the objects already there."""
    from geoseg.objectstore.uploads import put_bytes

    prefix = check_s3_folder(url, True, BATCH_MARKER)
    names: set[str] = set()
    for key_url in list_keys(prefix):
        name = key_url[len(prefix) :]
        names.add(name)
        if name.endswith(record_suffix) and "/" not in name:
            data = read_bytes(key_url)
            if data is not None:
                (staging / name).write_bytes(data)
    if BATCH_MARKER not in names:
        put_bytes(prefix + BATCH_MARKER, b'{"geoseg": "batch"}\n')
    return names


def push(url: str, staging: Path, paths: list[Path], keep: tuple[Path, ...] = ()) -> None:
    """Upload ``paths`` (files, or folders of cells, relative to ``staging``) in order, then
    remove the local copies but ``keep``."""
    prefix = url.rstrip("/") + "/"
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.exists():
                upload_file(f, prefix + f.relative_to(staging).as_posix())
    for path in paths:
        if path in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def check_folder_url(text: str) -> str | None:
    """The job's output folder as an ``s3://`` URL, or None for a local folder."""
    if not is_s3_url(text):
        return None
    if text.rstrip("/") == text.split("://", 1)[0] + ":/":
        raise OutputError(f"output.folder {text!r} names no bucket; give s3://bucket/prefix")
    return text.rstrip("/")
