"""A model's config, its file and its bounds: what reading a model needs, without torch.

:class:`ModelConfig` is the JSON a ``.pt`` model file carries beside its weights and an ONNX
model carries in its metadata; :func:`validate_config` bounds its numbers before anything is
built. Loading weights is :mod:`geoseg.models.checkpoint`'s job (it needs torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from geoseg.classes import CLASS_NODATA_16, ClassInfo
from geoseg.errors import CheckpointError, ModelError
from geoseg.version import __version__

FORMAT = "geoseg-model"
FORMAT_VERSION = 1
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: Models that ship inside the package: name -> file in geoseg/data.
BUILTIN_MODELS = {"s2-landcover-unet": "s2-landcover-unet.pt"}
DEFAULT_MODEL = "s2-landcover-unet"
#: ``receptive_field`` of a network that pools over its whole input.
GLOBAL_RECEPTIVE_FIELD = -1


@dataclass
class ModelConfig:
    """Everything about a model except its weights; saved as JSON beside them."""

    arch: str
    arch_kwargs: dict[str, Any]
    in_channels: int
    band_names: list[str]
    mean: list[float]
    std: list[float]
    classes: list[ClassInfo]
    ignore_value: int | None = None
    receptive_field: int = 0
    output_stride: int = 1
    training: dict[str, Any] = field(default_factory=dict)
    geoseg_version: str = __version__

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["classes"] = [
            {"value": c.value, "name": c.name, "color": list(c.color)} for c in self.classes
        ]
        d["format"] = FORMAT
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        if d.pop("format", None) != FORMAT:
            raise CheckpointError("not a geoseg model: its config has no geoseg format marker")
        version = d.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"model file format {version} is not supported by geoseg {__version__} "
                f"(expects {FORMAT_VERSION}); retrain or upgrade geoseg"
            )
        d["classes"] = [
            ClassInfo(int(c["value"]), str(c["name"]), tuple(c["color"])) for c in d["classes"]
        ]
        check_classes(d["classes"])
        return cls(**d)


def check_classes(classes: Sequence[ClassInfo]) -> None:
    """Class values fit a class raster (0..65534: uint8 up to 254, else uint16, the top value
    being nodata), are unique, and colours are RGB 0..255."""
    if not classes:
        raise CheckpointError("the model has no classes")
    values = [c.value for c in classes]
    bad = [v for v in values if not 0 <= v < CLASS_NODATA_16]
    if bad:
        raise CheckpointError(
            f"class value {bad[0]} out of range: class values must be 0..{CLASS_NODATA_16 - 1}"
        )
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise CheckpointError(f"class value(s) {dupes} appear more than once")
    for c in classes:
        if len(c.color) != 3 or not all(0 <= int(v) <= 255 for v in c.color):
            raise CheckpointError(
                f"class {c.value} ({c.name}) has colour {list(c.color)}: give 3 values 0..255"
            )


@dataclass
class LoadedModel:
    """A network in eval mode with what it expects and what it predicts.

    ``network`` takes normalized float32 N x C x H x W (H, W multiples of ``output_stride``)
    and returns logits N x K x H x W.
    """

    #: The torch module; None where only the config was read (the client plans with that).
    network: Any
    config: ModelConfig
    path: str
    sha256: str
    name: str
    #: ``torch`` (a ``.pt`` file) or ``onnx`` (an ONNX file, run by ONNX Runtime).
    format: str = "torch"

    @property
    def in_bands(self) -> list[str]:
        return list(self.config.band_names)

    @property
    def classes(self) -> list[ClassInfo]:
        return list(self.config.classes)

    @property
    def output_stride(self) -> int:
        return self.config.output_stride

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def summary(self) -> str:
        """One line about the model: format, architecture, bands, stride, receptive field, classes."""
        classes = ", ".join(c.name for c in self.classes)
        return (
            f"{self.name}: {self.format} model, {self.config.arch}, bands {','.join(self.in_bands)}, "
            f"stride {self.output_stride}, RF radius {self.receptive_field}; classes {classes}"
        )

    @property
    def normalization(self) -> dict[str, list[float]]:
        """Per-band ``(x - mean) / std``, applied to the raw scene values."""
        return {"mean": list(self.config.mean), "std": list(self.config.std)}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, the cache key a worker keeps a loaded model under."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def builtin_model_names() -> list[str]:
    return sorted(BUILTIN_MODELS)


def resolve_model_path(name_or_path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """File and display name of a model given by built-in name, path, or ``None`` (the default)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = str(name_or_path)
    if text in BUILTIN_MODELS:
        path = DATA_DIR / BUILTIN_MODELS[text]
        if not path.exists():
            raise ModelError(
                f"built-in model {text} is not installed ({path} missing); reinstall geoseg"
            )
        return path, text
    path = Path(text)
    if path.is_file():
        return path, path.name
    if path.exists():
        raise ModelError(f"model {text} is a directory; give a geoseg model file")
    raise ModelError(
        f"unknown model {text!r}: no such file, and not a built-in model "
        f"(built-in: {', '.join(builtin_model_names())})"
    )


#: Bounds on what a model file may ask for, checked before anything is built: a model file is
#: untrusted input, and its numbers size tensors, tiles and output values.
MAX_BANDS = 1024
MAX_STRIDE = 1024
MAX_RECEPTIVE_FIELD = 8192  # as far as measure_receptive_field looks
MAX_ARG_INT = 65536
MAX_ARG_LIST = 64


def _check_arg(name: str, value: Any) -> str | None:
    """What is wrong with one architecture argument from a file (JSON scalars and short lists)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_ARG_INT else f"{name}={value} is out of range"
    if isinstance(value, float):
        return (
            None
            if math.isfinite(value) and abs(value) <= MAX_ARG_INT
            else f"{name}={value} is out of range"
        )
    if isinstance(value, str):
        return None if len(value) <= 64 else f"{name} is a {len(value)}-character string"
    if isinstance(value, list):
        if len(value) > MAX_ARG_LIST:
            return f"{name} lists {len(value)} values"
        return next(
            (e for e in (_check_arg(f"{name}[{i}]", v) for i, v in enumerate(value)) if e), None
        )
    return f"{name} has type {type(value).__name__}"


def validate_config(config: ModelConfig, architecture: bool = True) -> None:
    """Refuse a config whose values would crash, exhaust memory or corrupt outputs, before any
    network is built: architecture and arguments, bands, normalization, stride and receptive
    field (classes: :func:`check_classes`). ``architecture=False`` skips the architecture and
    its arguments (ONNX models carry a graph, not a registry name)."""
    import inspect

    from geoseg.models import get_architecture

    problems: list[str] = []
    spec = None
    # typed as read from JSON: the annotations are what a valid file holds, not what it may hold
    arch: object = config.arch
    arch_kwargs: object = config.arch_kwargs
    if architecture:
        spec = get_architecture(arch) if isinstance(arch, str) else None
        if spec is None:
            problems.append(f"architecture {arch!r} is not a name")
    if not isinstance(arch_kwargs, dict):
        problems.append("architecture arguments are not a mapping")
    elif spec is not None:
        params = inspect.signature(spec.build).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        known = set(params) - {"self", "in_channels", "num_classes"}
        for k, v in config.arch_kwargs.items():
            if not takes_any and k not in known:
                problems.append(f"unknown argument {k!r} of {config.arch}")
            elif (err := _check_arg(k, v)) is not None:
                problems.append(err)
    n = config.in_channels
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BANDS:
        problems.append(f"in_channels {n!r} is not 1..{MAX_BANDS}")
    else:
        for what, seq in (
            ("band_names", config.band_names),
            ("mean", config.mean),
            ("std", config.std),
        ):
            if not isinstance(seq, list) or len(seq) != n:
                problems.append(f"{what} does not list {n} bands")
        for what, seq in (("mean", config.mean), ("std", config.std)):
            if isinstance(seq, list) and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in seq
            ):
                problems.append(f"{what} holds values that are not finite numbers")
        if isinstance(config.std, list) and any(
            isinstance(v, (int, float)) and v <= 0 for v in config.std
        ):
            problems.append("std holds values <= 0")
    stride = config.output_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= MAX_STRIDE:
        problems.append(f"output stride {stride!r} is not 1..{MAX_STRIDE}")
    rf = config.receptive_field
    if (
        isinstance(rf, bool)
        or not isinstance(rf, int)
        or not GLOBAL_RECEPTIVE_FIELD <= rf <= MAX_RECEPTIVE_FIELD
    ):
        problems.append(
            f"receptive field {rf!r} is not {GLOBAL_RECEPTIVE_FIELD}..{MAX_RECEPTIVE_FIELD}"
        )
    iv = config.ignore_value
    if iv is not None and (isinstance(iv, bool) or not isinstance(iv, int) or not 0 <= iv <= 255):
        problems.append(f"ignore value {iv!r} is not 0..255")
    if problems:
        raise CheckpointError("; ".join(problems))
