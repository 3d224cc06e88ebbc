"""Tables of counts and areas written as CSV or Parquet, staged beside the output and renamed
onto it (a reader sees the whole table or none), with the user's umask."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

from geoseg.errors import ResultsError
from geoseg.fs import (
    check_output_path,
    publish_file,
    remove_quietly,
    stage_bytes,
    temporary_sibling,
)

#: Table formats by extension.
TABLE_FORMATS = (".csv", ".parquet")


def check_table_path(
    path: str | os.PathLike[str], overwrite: bool, what: str, formats: Sequence[str] = TABLE_FORMATS
) -> Path:
    """The output path, checked before any work: a known extension, writable, not there unless
    ``overwrite``."""
    p = Path(path)
    if p.suffix.lower() not in formats:
        raise ResultsError(
            f"unknown {what} format {p.suffix or '(no extension)'!r} for {p.name}; "
            f"use one of {', '.join(formats)}"
        )
    if p.suffix.lower() == ".parquet":
        require_pyarrow()
    return check_output_path(p, overwrite, what)


def require_pyarrow() -> None:
    """Fail in one line when Parquet is asked for without pyarrow."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ResultsError(
            "Parquet output needs pyarrow: pip install 'geoseg[parquet]', or write .csv"
        ) from None


def publish(tmp: Path, final: Path) -> None:
    """Give a staged file the user's umask and rename it onto ``final``; on failure remove it."""
    try:
        publish_file(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise


def stage_table(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` (dicts keyed by ``columns``) as CSV or Parquet (by ``path``'s extension) in a
    hidden temporary beside ``path``; returns the temporary."""
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [r.get(c) for r in rows] for c in columns})
        tmp = temporary_sibling(path, ".parquet")
        try:
            pq.write_table(table, str(tmp))
        except BaseException:
            remove_quietly(tmp)
            raise
        return tmp
    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r.get(c)) for c in columns})
    return stage_bytes(path, text.getvalue().encode(), ".part.csv")


def write_table(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Stage and publish a table (:func:`stage_table`, :func:`publish`)."""
    publish(stage_table(path, rows, columns), path)


def _cell(value: Any) -> Any:
    """Floats written in full precision (repr), others as they are."""
    return repr(value) if isinstance(value, float) else value
