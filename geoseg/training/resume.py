"""Resuming training: where the state is kept, and a state refused in one line when it belongs to
another architecture or class set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from geoseg.errors import TrainingError, first_line


def resume_state_path(output: Path) -> Path:
    """Where training keeps what ``--resume`` needs, next to the model file."""
    return output.with_name(f".{output.name}.state.pt")


def _describe(identity: dict[str, Any]) -> str:
    classes = ",".join(f"{v}={n}" for v, n in identity["classes"])
    args = (
        json.dumps(identity["arch_kwargs"], sort_keys=True)
        if identity["arch_kwargs"]
        else "default arguments"
    )
    return f"{identity['arch']} ({args}), classes {classes}, {len(identity['bands'])} bands"


def load_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """A resume state, refused in one line when it belongs to another architecture or class set."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises several kinds
        raise TrainingError(
            f"cannot resume: {path} is damaged ({first_line(exc)[:120]}); "
            "train without --resume, with --overwrite"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise TrainingError(
            f"cannot resume: {path} is not a geoseg training state; train without --resume"
        )
    if "identity" in state:
        saved = json.loads(state["identity"])
        if saved != json.loads(json.dumps(identity, sort_keys=True)):
            raise TrainingError(
                f"cannot resume: the interrupted run trained {_describe(saved)}, this one asks for "
                f"{_describe(identity)}; resume with the same --arch, --arch-args and chips, "
                "or train without --resume, with --overwrite"
            )
    return state
