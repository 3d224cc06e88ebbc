"""Recipes: job files that run geoseg commands in sequence (chip -> train -> evaluate ...).

A recipe is YAML with ``variables`` (strings, overridable with ``--set``) and ``steps``, each a
mapping of one geoseg command name to its argument list. ``{name}`` in an argument is replaced
by a variable. Relative paths are taken from the recipe's folder, and a recipe can run only
geoseg's own commands, so a job file cannot start arbitrary programs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from geoseg.errors import RecipeError, first_line

ALLOWED = ("chip", "train", "evaluate", "predict")


def load_recipe(path: str | os.PathLike[str], overrides: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
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
    steps: list[tuple[str, list[str]]] = []
    for i, step in enumerate(doc.get("steps") or [], start=1):
        if not isinstance(step, dict) or len(step) != 1:
            problems.append(f"steps[{i}]: one command name mapping to a list of arguments")
            continue
        (name, args), = step.items()
        if name not in ALLOWED:
            problems.append(f"steps[{i}]: {name!r} is not a recipe command (use {', '.join(ALLOWED)})")
            continue
        if not isinstance(args, list):
            problems.append(f"steps[{i}].{name}: arguments must be a list")
            continue
        out: list[str] = []
        for a in args:
            text = str(a)
            missing = [m for m in re.findall(r"\{(\w+)\}", text) if m not in variables]
            if missing:
                problems.append(f"steps[{i}].{name}: undefined variable(s) {missing} in {text!r}")
                continue
            text = re.sub(r"\{(\w+)\}", lambda m: variables[m.group(1)], text)
            out.append(_resolve(text, base))
        steps.append((name, out))
    if not steps and not problems:
        problems.append("no steps")
    if problems:
        raise RecipeError(f"{path}: " + "; ".join(problems))
    return steps


def _resolve(arg: str, base: Path) -> str:
    """Relative paths (arguments that look like paths) are taken from the recipe's folder."""
    if arg.startswith("-") or arg.startswith("/vsi") or "://" in arg or os.path.isabs(arg):
        return arg
    if "/" in arg or arg.endswith((".tif", ".pt", ".json", ".gpkg")):
        return str((base / arg).resolve())
    return arg


def run_recipe(path: str | os.PathLike[str], overrides: dict[str, str] | None = None,
               echo: Callable[[str], Any] = print) -> None:
    """Run every step in order; the first failing step stops the recipe."""
    from geoseg.cli.main import cli

    steps = load_recipe(path, overrides)
    for i, (name, args) in enumerate(steps, start=1):
        echo(f"[{i}/{len(steps)}] geoseg {name} {' '.join(args)}")
        cli.main([name, *args], standalone_mode=False)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"--set {item!r} is not NAME=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out
