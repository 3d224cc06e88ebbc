"""Recipes: job files that run geoseg's library steps in sequence (chip -> train -> evaluate ...).

A recipe is YAML with ``variables`` (strings, overridable) and ``steps``, each a mapping of one
step name (``chip``, ``train``, ``predict``, ``evaluate``) to the keyword arguments of its
library function (:func:`geoseg.training.chips.make_chips`, :func:`geoseg.training.train.train`,
:func:`geoseg.predict`, :func:`geoseg.training.evaluate.evaluate`). ``{name}`` in a value is
replaced by a variable (a value that is only ``{name}`` takes the variable's YAML type, so
``epochs: "{epochs}"`` is a number). Relative paths are taken from the recipe's folder.

Every step is checked before the first one runs: names, arguments against the function's
signature and types, and option values (a bad ``tta`` in the last step fails at once, not
after training). A recipe runs only these library calls, so a job file cannot start programs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import yaml

from geoseg.errors import GeosegError, RecipeError, first_line


@dataclass(frozen=True)
class StepKind:
    """A recipe step: its library function, the arguments that are paths, and text converters."""

    function: Callable[[], Callable[..., Any]]
    paths: tuple[str, ...]
    converters: tuple[tuple[str, Callable[[], Callable[[Any], Any]]], ...] = ()


def _make_chips() -> Callable[..., Any]:
    from geoseg.training.chips import make_chips

    return make_chips


def _train() -> Callable[..., Any]:
    from geoseg.training.train import train

    return train


def _predict() -> Callable[..., Any]:
    from geoseg.prediction import predict

    return predict


def _evaluate() -> Callable[..., Any]:
    from geoseg.training.evaluate import evaluate

    return evaluate


def _parse_class_names() -> Callable[[Any], Any]:
    from geoseg.classes import parse_class_names

    return lambda v: parse_class_names(v) if isinstance(v, str) else v


def _parse_value_map() -> Callable[[Any], Any]:
    from geoseg.training.chips import parse_value_map

    return lambda v: parse_value_map(v) if isinstance(v, str) else v


STEPS: dict[str, StepKind] = {
    "chip": StepKind(_make_chips, ("pairs", "out_dir"),
                     (("class_names", _parse_class_names), ("value_map", _parse_value_map))),
    "train": StepKind(_train, ("chips_dir", "output")),
    "predict": StepKind(_predict, ("scene", "output", "model", "probabilities", "vector")),
    "evaluate": StepKind(_evaluate, ("prediction", "reference", "json_path")),
}
ALLOWED = tuple(STEPS)
#: arguments a job file cannot give (live objects, or the one way to print)
NOT_IN_RECIPES = ("client", "options", "echo")


@dataclass
class RecipeStep:
    """One validated step: its name and the keyword arguments of its library call."""

    name: str
    arguments: dict[str, Any]

    def describe(self) -> str:
        return f"{self.name} " + " ".join(f"{k}={v}" for k, v in self.arguments.items())

    def run(self) -> Any:
        return STEPS[self.name].function()(**self.arguments)


def load_recipe(path: str | os.PathLike[str], overrides: dict[str, str] | None = None) -> list[RecipeStep]:
    """Validated steps of a recipe, variables substituted; all problems reported at once."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {first_line(exc)}") from None
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with 'variables' and 'steps'")
    unknown = set(doc) - {"variables", "steps", "description"}
    if unknown:
        problems.append(f"unknown top-level key(s) {sorted(unknown)}")
    variables = {str(k): str(v) for k, v in (doc.get("variables") or {}).items()}
    variables.update(overrides or {})
    base = p.resolve().parent
    steps: list[RecipeStep] = []
    for i, step in enumerate(doc.get("steps") or [], start=1):
        if not isinstance(step, dict) or len(step) != 1:
            problems.append(f"steps[{i}]: one step name mapping to its arguments")
            continue
        (name, args), = step.items()
        if name not in STEPS:
            problems.append(f"steps[{i}]: {name!r} is not a recipe step (use {', '.join(ALLOWED)})")
            continue
        place = f"steps[{i}].{name}"
        if not isinstance(args, dict):
            problems.append(f"{place}: arguments are a mapping of the library call's keywords, "
                            f"e.g. {{output: model.pt, epochs: 30}}, not {type(args).__name__}")
            continue
        missing: list[str] = []
        kwargs = {str(k): _substitute(v, variables, missing) for k, v in args.items()}
        if missing:
            problems.append(f"{place}: undefined variable(s) {sorted(set(missing))}")
            continue
        before = len(problems)
        kwargs = _checked(name, kwargs, place, problems)
        if len(problems) == before:
            kind = STEPS[name]
            for key in kind.paths:
                if key in kwargs:
                    kwargs[key] = _resolve_paths(kwargs[key], base, strict=key != "model")
            steps.append(RecipeStep(name, kwargs))
    if not steps and not problems:
        problems.append("no steps")
    if problems:
        raise RecipeError(f"{path}: " + "; ".join(problems))
    return steps


def _substitute(value: Any, variables: dict[str, str], missing: list[str]) -> Any:
    """``{name}`` replaced in every string of ``value``; a lone ``{name}`` takes its YAML type."""
    if isinstance(value, str):
        names = re.findall(r"\{(\w+)\}", value)
        missing.extend(n for n in names if n not in variables)
        if any(n not in variables for n in names):
            return value
        whole = re.fullmatch(r"\{(\w+)\}", value)
        if whole:
            return yaml.safe_load(variables[whole.group(1)])
        return re.sub(r"\{(\w+)\}", lambda m: variables[m.group(1)], value)
    if isinstance(value, list):
        return [_substitute(v, variables, missing) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, missing) for k, v in value.items()}
    return value


def _checked(name: str, kwargs: dict[str, Any], place: str, problems: list[str]) -> dict[str, Any]:
    """Arguments checked against the step's signature and types; option values checked by
    building them (predict's by :class:`geoseg.options.PredictOptions`)."""
    kind = STEPS[name]
    func = kind.function()
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except NameError:  # an annotation only importable for type checkers: check names only
        hints = {}
    params = {n: p for n, p in signature.parameters.items()
              if n not in NOT_IN_RECIPES and p.kind is not inspect.Parameter.VAR_KEYWORD}
    extra: dict[str, Any] = {}
    if name == "predict":
        from geoseg.options import PredictOptions

        option_names = {f.name for f in dataclasses.fields(PredictOptions)}
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k in option_names}
        try:
            PredictOptions.from_keywords(**extra)
        except GeosegError as exc:
            problems.append(f"{place}: {first_line(exc)}")
    for key in kwargs:
        if key not in params:
            problems.append(f"{place}.{key}: unknown argument (known: {', '.join(params)})")
    for n, p in params.items():
        if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_POSITIONAL and n not in kwargs:
            problems.append(f"{place}.{n}: required")
    converters = dict(kind.converters)
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in params:
            continue
        if key in converters:
            try:
                value = converters[key]()(value)
            except GeosegError as exc:
                problems.append(f"{place}.{key}: {first_line(exc)}")
                continue
        if not _fits(value, hints.get(key, Any)):
            problems.append(f"{place}.{key}: expected {_describe(hints.get(key, Any))}, got {value!r}")
            continue
        out[key] = value
    if name == "train" and isinstance(out.get("arch"), str):
        from geoseg.models import get_architecture

        try:
            get_architecture(out["arch"])
        except GeosegError as exc:
            problems.append(f"{place}.arch: {first_line(exc)}")
    return {**out, **extra}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value can be given for a parameter annotated ``hint`` (outer types only
    where the library checks the contents itself)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is os.PathLike or origin is os.PathLike:
        return False  # a path is given as a string (str is in the same union)
    if origin in (list, tuple, Sequence, typing.Sequence) or origin is not None and origin.__name__ == "Sequence":
        return isinstance(value, (list, tuple)) and not isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a forward reference or alias the library checks itself


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint) if not (typing.get_origin(h) is os.PathLike))
    if hint is type(None):
        return "nothing"
    origin = typing.get_origin(hint)
    return getattr(origin or hint, "__name__", str(hint))


def _resolve_paths(value: Any, base: Path, strict: bool = True) -> Any:
    """Relative paths (in lists too) taken from the recipe's folder; GDAL and URL paths kept.
    With ``strict=False`` (a model, which may be a built-in name) only what looks like a path."""
    if isinstance(value, (list, tuple)):
        return [_resolve_paths(v, base, strict) for v in value]
    from geoseg.paths import is_virtual

    if not isinstance(value, str) or is_virtual(value) or os.path.isabs(value):
        return value
    if strict or "/" in value or value.endswith((".tif", ".pt", ".json", ".gpkg")):
        return str((base / value).resolve())
    return value


def run_recipe(path: str | os.PathLike[str], overrides: dict[str, str] | None = None,
               echo: Callable[[str], Any] = print) -> None:
    """Check every step, then run them in order; the first failing step stops the recipe."""
    steps = load_recipe(path, overrides)
    for i, step in enumerate(steps, start=1):
        echo(f"[{i}/{len(steps)}] {step.describe()}")
        result = step.run()
        table = getattr(result, "table", None)  # scores of evaluate, chips per split of chip
        if callable(table):
            try:
                echo(table())
            except TypeError:  # a table that needs more than the result itself
                pass


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs (variable overrides) as a mapping."""
    out = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"--set {item!r} is not NAME=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out
