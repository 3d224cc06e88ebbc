"""The machinery behind the option dataclasses: field metadata, checks against the field types,
keyword handling and the job-file schema.

Each option is a dataclass field whose ``metadata`` (:func:`option_help`) holds its help text and
limits (``min``, ``max``, ``min_open``) and, where they differ from the field's name, its CLI
name (``cli``) and job-file key (``flag``). The modules beside this one define the dataclasses;
nothing here knows any of them.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Literal, Union

from geoseg.errors import OptionError

#: Where a network runs (predict and train); ``auto`` uses CUDA when present.
Device = Literal["auto", "cpu", "cuda"]


def choices(literal: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` type, for ``click.Choice`` and error messages."""
    return typing.get_args(literal)


def option_help(text: str | None, **extra: Any) -> dict[str, Any]:
    """A field's metadata: its help text and ``extra`` (limits, CLI name, job-file key)."""
    return {"help": text, **extra}


OptionsT = typing.TypeVar("OptionsT")


def take_fields(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """Remove the fields of the options dataclass ``cls`` from ``values`` (keywords given to the
    API, or a command's parameters) and return them, as ``cls``'s keywords."""
    return {f.name: values.pop(f.name) for f in dataclasses.fields(cls) if f.name in values}


def options_from_keywords(
    cls: type[OptionsT], what: str, base: OptionsT | None, keywords: dict[str, Any]
) -> OptionsT:
    """``base`` (or ``cls``'s defaults) with ``keywords`` replaced; an unknown keyword is an
    error that lists the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise OptionError(f"unknown {what} option(s) {unknown}; known: {', '.join(sorted(known))}")
    if base is None:
        return cls(**keywords)
    return dataclasses.replace(base, **keywords)  # type: ignore[type-var]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_fields(options: Any) -> None:
    """Check every field of an options dataclass against its type (Literal values, int minimums)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        _check_value(
            f.metadata.get("cli", f.name), getattr(options, f.name), hints[f.name], f.metadata
        )


def _check_value(name: str, value: Any, hint: Any, meta: Any) -> None:
    """Check ``value`` against a field's type: Literal values, numbers (with ``min``), tuples."""
    if value is None:
        return
    union = typing.get_origin(hint) in (Union, types.UnionType)
    parts = typing.get_args(hint) if union else (hint,)
    allowed = tuple(v for p in parts if typing.get_origin(p) is Literal for v in typing.get_args(p))
    if any(value == v and type(value) is type(v) for v in allowed):
        return
    for p in parts:
        if typing.get_origin(p) is tuple and isinstance(value, tuple):
            for v in value:
                _check_value(name, v, typing.get_args(p)[0], {})
            return
        if (
            p in (int, float)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (p is float or isinstance(value, int))
        ):
            low, high = meta.get("min"), meta.get("max")
            if low is not None and (value < low or (meta.get("min_open") and value == low)):
                raise OptionError(
                    f"{_flag(name)} must be {'above' if meta.get('min_open') else 'at least'} "
                    f"{low}, got {value}"
                )
            if high is not None and value > high:
                raise OptionError(f"{_flag(name)} must be at most {high}, got {value}")
            return
        if typing.get_origin(p) in (dict, collections.abc.Mapping) and isinstance(
            value, collections.abc.Mapping
        ):
            return
        if p in (str, bool) and type(value) is p:
            return
        if isinstance(p, type) and dataclasses.is_dataclass(p) and isinstance(value, p):
            return
    if allowed and not {int, float} & set(parts):
        raise OptionError(f"unknown {_flag(name)} {value!r}; use {', '.join(map(str, allowed))}")
    what = " or ".join(
        [repr(v) for v in allowed]
        + [
            {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(
                p,
                "a mapping"
                if typing.get_origin(p) in (dict, collections.abc.Mapping)
                else getattr(p, "__name__", str(p)),
            )
            for p in parts
            if typing.get_origin(p) is not Literal and p is not type(None)
        ]
    )
    raise OptionError(f"{_flag(name)} must be {what}, got {value!r}")


def key_of(f: dataclasses.Field[Any]) -> str:
    """A field's name in the job file and on the command line (``skip_class`` for ``skip_classes``)."""
    return str(f.metadata.get("flag", f.name))


def job_schema(cls: type) -> dict[str, Any]:
    """The job-file schema of an options dataclass: each field's key and the YAML types it takes."""
    hints = typing.get_type_hints(cls)
    return {key_of(f): _yaml_types(hints[f.name]) for f in dataclasses.fields(cls)}


def _yaml_types(hint: Any) -> Any:
    """YAML types for a field type: 'int|auto' for ``int | Literal['auto']``, else a type or tuple."""
    union = typing.get_origin(hint) in (Union, types.UnionType)
    parts = typing.get_args(hint) if union else (hint,)
    if any(isinstance(p, type) and dataclasses.is_dataclass(p) for p in parts):
        return (bool, dict)  # nested settings (the CRF's): true, false or a mapping
    out: list[type] = []
    auto = False
    for p in parts:
        if p is type(None):
            continue
        if typing.get_origin(p) is Literal:
            values = typing.get_args(p)
            if values == ("auto",):
                auto = True
            else:
                out.extend(t for t in dict.fromkeys(type(v) for v in values) if t not in out)
        elif typing.get_origin(p) is tuple:
            out.append(list)
        elif typing.get_origin(p) in (dict, collections.abc.Mapping):
            out.append(dict)
        elif p is float:
            out.extend(t for t in (int, float) if t not in out)
        elif isinstance(p, type):
            out.append(p)
    if auto and out == [int]:
        return "int|auto"
    return out[0] if len(out) == 1 else tuple(out)
