"""Recipes: job files that run geoseg's library steps in sequence (chip -> train -> evaluate ...).

A recipe is YAML with ``variables`` (strings, overridable) and ``steps``, each a mapping of one
step name (``chip``, ``train``, ``predict``, ``evaluate``) to the keyword arguments of its
library function (:func:`geoseg.training.chips.make_chips`, :func:`geoseg.training.train.train`,
:func:`geoseg.predict`, :func:`geoseg.training.evaluate.evaluate`), its options among them
(the fields of :class:`geoseg.options.ChipOptions`, ``TrainOptions``, ``PredictOptions``). ``{name}`` in a value is
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
from geoseg.jobs.job_file import check_schema, check_values, read_job_file
from geoseg.options import job_schema


@dataclass(frozen=True)
class StepKind:
    """A recipe step: its library function, the arguments that are paths, and its options
    dataclass (whose fields are keywords of the function too)."""

    function: Callable[[], Callable[..., Any]]
    paths: tuple[str, ...]
    options: Callable[[], type] | None = None


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


def _chip_options() -> type:
    from geoseg.options import ChipOptions

    return ChipOptions


def _train_options() -> type:
    from geoseg.options import TrainOptions

    return TrainOptions


def _predict_options() -> type:
    from geoseg.options import PredictOptions

    return PredictOptions


STEPS: dict[str, StepKind] = {
    "chip": StepKind(_make_chips, ("pairs", "out_dir"), _chip_options),
    "train": StepKind(_train, ("chips_dir", "output"), _train_options),
    "predict": StepKind(
        _predict, ("scene", "output", "model", "probabilities", "vector"), _predict_options
    ),
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


def load_recipe(
    path: str | os.PathLike[str], overrides: dict[str, str] | None = None, doc: Any = None
) -> list[RecipeStep]:
    """Validated steps of a recipe (``doc``: its parsed YAML, when read already), variables
    substituted; all problems reported at once."""
    p = Path(path)
    if doc is None:
        doc = read_job_file(path, RecipeError, "recipe")
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
        ((name, args),) = step.items()
        if name not in STEPS:
            problems.append(f"steps[{i}]: {name!r} is not a recipe step (use {', '.join(ALLOWED)})")
            continue
        place = f"steps[{i}].{name}"
        if not isinstance(args, dict):
            problems.append(
                f"{place}: arguments are a mapping of the library call's keywords, "
                f"e.g. {{output: model.pt, epochs: 30}}, not {type(args).__name__}"
            )
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
    """Arguments checked against the step's signature and types; option values checked against
    the step's options dataclass (:func:`_checked_options`)."""
    kind = STEPS[name]
    func = kind.function()
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except NameError:  # an annotation only importable for type checkers: check names only
        hints = {}
    params = {
        n: p
        for n, p in signature.parameters.items()
        if n not in NOT_IN_RECIPES and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    option_names = [f.name for f in dataclasses.fields(kind.options())] if kind.options else []
    extra = _checked_options(kind, kwargs, place, problems)
    for key in kwargs:
        if key not in params:
            problems.append(
                f"{place}.{key}: unknown argument (known: {', '.join([*params, *option_names])})"
            )
    for n, p in params.items():
        if (
            p.default is inspect.Parameter.empty
            and p.kind is not inspect.Parameter.VAR_POSITIONAL
            and n not in kwargs
        ):
            problems.append(f"{place}.{n}: required")
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in params:
            continue
        if not _fits(value, hints.get(key, Any)):
            problems.append(
                f"{place}.{key}: expected {_describe(hints.get(key, Any))}, got {value!r}"
            )
            continue
        out[key] = value
    if name == "train" and isinstance(extra.get("arch"), str):
        from geoseg.models import get_architecture

        try:
            get_architecture(extra["arch"])
        except GeosegError as exc:
            problems.append(f"{place}.arch: {first_line(exc)}")
    return {**out, **extra}


def _checked_options(
    kind: StepKind, kwargs: dict[str, Any], place: str, problems: list[str]
) -> dict[str, Any]:
    """Take the step's options out of ``kwargs`` and check them with the job-file validator that
    checks a batch job's sections: YAML types by key (``steps[2].train.epochs: expected int``),
    then the values by building the options (``steps[3].predict: unknown --tta 'd8'``)."""
    if kind.options is None:
        return {}
    cls = kind.options()
    schema = job_schema(cls)
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in schema}
    check_schema(given, schema, place, problems)
    check_values(given, cls, place, problems)
    return given


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
    if (
        origin in (list, tuple, Sequence, typing.Sequence)
        or origin is not None
        and origin.__name__ == "Sequence"
    ):
        return isinstance(value, (list, tuple)) and not isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a forward reference or alias the library checks itself


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(
            _describe(h) for h in typing.get_args(hint) if typing.get_origin(h) is not os.PathLike
        )
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


def run_recipe(
    path: str | os.PathLike[str],
    overrides: dict[str, str] | None = None,
    echo: Callable[[str], Any] = print,
    doc: Any = None,
) -> None:
    """Check every step, then run them in order; the first failing step stops the recipe."""
    steps = load_recipe(path, overrides, doc)
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
