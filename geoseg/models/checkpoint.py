"""Model files: weights plus everything predict needs, loaded without executing code.

A geoseg model file is ``torch.save({"geoseg": <JSON config>, "state_dict": <tensors>})`` and is
read back with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from geoseg import __version__
from geoseg.errors import CheckpointError, ModelError, first_line
from geoseg.io import CLASS_NODATA_16, ClassInfo
from geoseg.models import create_model, output_stride
from geoseg.models.dilation import GriddingWarning
from geoseg.models.receptive_field import NonLocalError, measure_receptive_field

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
        d["classes"] = [{"value": c.value, "name": c.name, "color": list(c.color)} for c in self.classes]
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
        d["classes"] = [ClassInfo(int(c["value"]), str(c["name"]), tuple(c["color"])) for c in d["classes"]]
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
        raise CheckpointError(f"class value {bad[0]} out of range: class values must be 0..{CLASS_NODATA_16 - 1}")
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise CheckpointError(f"class value(s) {dupes} appear more than once")
    for c in classes:
        if len(c.color) != 3 or not all(0 <= int(v) <= 255 for v in c.color):
            raise CheckpointError(f"class {c.value} ({c.name}) has colour {list(c.color)}: give 3 values 0..255")


@dataclass
class LoadedModel:
    """A network in eval mode with what it expects and what it predicts.

    ``network`` takes normalized float32 N x C x H x W (H, W multiples of ``output_stride``)
    and returns logits N x K x H x W.
    """

    network: nn.Module
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
        return (f"{self.name}: {self.format} model, {self.config.arch}, bands {','.join(self.in_bands)}, "
                f"stride {self.output_stride}, RF radius {self.receptive_field}; classes {classes}")

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


def build_config(
    network: nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any],
    band_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[ClassInfo],
    ignore_value: int | None = None,
    training: dict[str, Any] | None = None,
) -> ModelConfig:
    """A config whose receptive field and stride are measured from ``network``."""
    check_classes(classes)
    stride = output_stride(network)
    try:
        rf = measure_receptive_field(network, len(band_names), stride)
    except NonLocalError:
        rf = GLOBAL_RECEPTIVE_FIELD
    return ModelConfig(
        arch=arch,
        arch_kwargs=dict(arch_kwargs),
        in_channels=len(band_names),
        band_names=list(band_names),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        classes=list(classes),
        ignore_value=ignore_value,
        receptive_field=rf,
        output_stride=stride,
        training=dict(training or {}),
    )


def save_model(path: str | os.PathLike[str], network: nn.Module, config: ModelConfig) -> Path:
    """Write weights and config atomically (temporary file, then rename)."""
    from geoseg.io import remove_quietly, temporary_sibling

    path = Path(path)
    tmp = temporary_sibling(path, ".pt")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    try:
        torch.save({"geoseg": config.to_json(), "state_dict": state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


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
        return None if math.isfinite(value) and abs(value) <= MAX_ARG_INT else f"{name}={value} is out of range"
    if isinstance(value, str):
        return None if len(value) <= 64 else f"{name} is a {len(value)}-character string"
    if isinstance(value, list):
        if len(value) > MAX_ARG_LIST:
            return f"{name} lists {len(value)} values"
        return next((e for e in (_check_arg(f"{name}[{i}]", v) for i, v in enumerate(value)) if e), None)
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
    if architecture:
        spec = get_architecture(config.arch) if isinstance(config.arch, str) else None
        if spec is None:
            problems.append(f"architecture {config.arch!r} is not a name")
    if not isinstance(config.arch_kwargs, dict):
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
        for what, seq in (("band_names", config.band_names), ("mean", config.mean), ("std", config.std)):
            if not isinstance(seq, list) or len(seq) != n:
                problems.append(f"{what} does not list {n} bands")
        for what, seq in (("mean", config.mean), ("std", config.std)):
            if isinstance(seq, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and math.isfinite(v) for v in seq):
                problems.append(f"{what} holds values that are not finite numbers")
        if isinstance(config.std, list) and any(isinstance(v, (int, float)) and v <= 0 for v in config.std):
            problems.append("std holds values <= 0")
    stride = config.output_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= MAX_STRIDE:
        problems.append(f"output stride {stride!r} is not 1..{MAX_STRIDE}")
    rf = config.receptive_field
    if isinstance(rf, bool) or not isinstance(rf, int) or not GLOBAL_RECEPTIVE_FIELD <= rf <= MAX_RECEPTIVE_FIELD:
        problems.append(f"receptive field {rf!r} is not {GLOBAL_RECEPTIVE_FIELD}..{MAX_RECEPTIVE_FIELD}")
    iv = config.ignore_value
    if iv is not None and (isinstance(iv, bool) or not isinstance(iv, int) or not 0 <= iv <= 255):
        problems.append(f"ignore value {iv!r} is not 0..255")
    if problems:
        raise CheckpointError("; ".join(problems))


def _check_shapes(path: Path, config: ModelConfig, state: dict[str, Any]) -> None:
    """Build the network without memory (meta device) and compare its tensors with the file's,
    so the real build allocates no more than the file holds."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", GriddingWarning)
            network = create_model(config.arch, config.in_channels, len(config.classes), **config.arch_kwargs)
    except (ModelError, RuntimeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CheckpointError(
            f"{path}: architecture {config.arch} cannot be built with {config.arch_kwargs} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); give a file written by 'geoseg train'"
        ) from None
    want = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if want != have or len(have) != len(state):
        diff = sorted(set(want.items()) ^ set(have.items()))[:1]
        raise CheckpointError(
            f"{path}: weights do not fit architecture {config.arch} with its arguments "
            f"({'tensor ' + diff[0][0] + ' ' + str(diff[0][1]) if diff else 'entries that are not tensors'}); "
            "give a file written by 'geoseg train'"
        )
    if output_stride(network) != config.output_stride:
        raise CheckpointError(
            f"{path}: records output stride {config.output_stride}, but {config.arch} with its arguments "
            f"has {output_stride(network)}; give a file written by 'geoseg train'"
        )


def read_model_file(
    path: str | os.PathLike[str], data: bytes | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and weights of a model file (from ``data``, its bytes, when given), refusing
    anything that needs code execution and any config outside :func:`validate_config`'s bounds."""
    source: Any = io.BytesIO(data) if data is not None else path
    if not zipfile.is_zipfile(source):
        raise CheckpointError(
            f"{path} is not a geoseg model file (not a PyTorch archive); "
            "give a file written by 'geoseg train'"
        )
    if data is not None:
        source.seek(0)
    try:
        blob = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} would need code execution to load (it pickles Python objects); geoseg only "
            "loads weights-only files: re-save it with geoseg.models.checkpoint.save_model"
        ) from exc
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a geoseg model file ({first_line(exc)}); "
            "give a file written by 'geoseg train'"
        ) from exc
    if not isinstance(blob, dict) or "geoseg" not in blob or "state_dict" not in blob:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a geoseg model (no geoseg config); "
            "give a file written by 'geoseg train'"
        )
    try:
        config = ModelConfig.from_json(blob["geoseg"])
        validate_config(config)
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} has a damaged geoseg config ({exc}); retrain the model") from exc
    if not isinstance(blob["state_dict"], dict):
        raise CheckpointError(f"{path} has no weights table; give a file written by 'geoseg train'")
    return config, blob["state_dict"]


def load_model(
    name_or_path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
    data: bytes | None = None,
) -> LoadedModel:
    """Load a model (``None`` = the built-in one, a ``.pt`` file or an ONNX geoseg model) in eval
    mode on ``device``.

    A ``.pt`` file is read once; its hash and its weights come from the same bytes (``data``,
    when the caller has read and checked them already), so the file cannot change in between."""
    path, name = resolve_model_path(name_or_path)
    from geoseg.models.onnx import is_onnx_file, load_onnx_model

    if is_onnx_file(path):
        return load_onnx_model(path, name, device)
    if data is None:
        data = path.read_bytes()
    config, state = read_model_file(path, data)
    _check_shapes(path, config, state)
    with warnings.catch_warnings():
        # A trained model's dilation schedule is fixed; the warning is for whoever trains one.
        warnings.simplefilter("ignore", GriddingWarning)
        network = create_model(config.arch, config.in_channels, len(config.classes), **config.arch_kwargs)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {config.arch} ({first_line(exc)})"
        ) from exc
    network.eval().to(device)
    return LoadedModel(network, config, str(path), hashlib.sha256(data).hexdigest(), name)
