"""Job files (prediction, map and recipe jobs): the one YAML reader and the one validator.

:func:`read_job_file` reads a job file once; :func:`check_schema` checks its keys and YAML types
against a schema (:data:`geoseg.jobs.batch.job.SCHEMA`, built from the options dataclasses with
:func:`geoseg.options.job_schema`) and :func:`check_values` checks a section's values by
building its options dataclass. Every problem is named by its place in the file
(``predict.tile``, ``steps[2].train.epochs``), so one error lists them all before any work.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from geoseg.errors import GeosegError, JobError, first_line
from geoseg.options import key_of
from geoseg.paths import is_virtual


def read_job_file(
    path: str | os.PathLike[str], error: type[JobError] = JobError, what: str = "job file"
) -> Any:
    """The YAML document of a job file; a missing file or bad YAML is one ``error`` line."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {first_line(exc)}") from None


def check_schema(value: Any, schema: Any, place: str, problems: list[str]) -> None:
    """Append to ``problems`` every key of ``value`` unknown to ``schema`` and every value of the
    wrong YAML type (``schema``: a type, a tuple of types, ``"int|auto"`` or a nested mapping)."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            problems.append(f"{place}: expected a mapping, got {type(value).__name__}")
            return
        for k in value:
            if k not in schema:
                problems.append(
                    f"{place}.{k}: unknown key (known: {', '.join(schema)})".lstrip(".")
                )
        for k, sub in schema.items():
            if k in value and value[k] is not None:
                check_schema(value[k], sub, f"{place}.{k}".lstrip("."), problems)
        return
    if schema == "int|auto":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(
                f"{place}: expected int or 'auto', got {type(value).__name__} {value!r}"
            )
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types:
        problems.append(f"{place}: expected {'/'.join(t.__name__ for t in types)}, got a boolean")
    elif not isinstance(value, types):
        problems.append(
            f"{place}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}"
        )


def check_values(
    section: Any, options: type, place: str, problems: list[str], extra: tuple[str, ...] = ()
) -> None:
    """Check a section's values by building its options dataclass from the keys whose types are
    right (a key :func:`check_schema` reported is left out, so it is not reported twice)."""
    if not isinstance(section, dict):
        return
    names = {key_of(f): f.name for f in dataclasses.fields(options)}
    reported = {p.split(":", 1)[0] for p in problems}
    try:
        options(
            **{
                names[k]: (tuple(v) if isinstance(v, list) and k != "bands" else v)
                for k, v in section.items()
                if k in names
                and k not in extra
                and v is not None
                and f"{place}.{k}" not in reported
            }
        )
    except GeosegError as exc:
        problems.append(f"{place}: {first_line(exc)}")


def resolve_path(base: Path, text: str) -> str:
    """A path written in a job file, relative to the file's folder ``base`` (absolute paths and
    URLs as written)."""
    if is_virtual(text) or os.path.isabs(text):
        return text
    return str((base / text).resolve())
