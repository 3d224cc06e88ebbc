"""Model files: weights plus everything predict needs, loaded without executing code.

A geoseg model file is ``torch.save({"geoseg": <JSON config>, "state_dict": <tensors>})`` and is
read back with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import hashlib
import json
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
        d["classes"] = [ClassInfo(int(c["value"]), str(c["name"]), tuple(c["color"])) for c in d["classes"]]  # type: ignore[arg-type]
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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    torch.save({"geoseg": config.to_json(), "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def read_model_file(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and weights of a model file, refusing anything that needs code execution."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a geoseg model file (not a PyTorch archive); "
            "give a file written by 'geoseg train'"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
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
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a damaged geoseg config ({exc}); retrain the model") from exc
    return config, blob["state_dict"]


def load_model(
    name_or_path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model (``None`` = the built-in one, a ``.pt`` file or an ONNX geoseg model) in eval
    mode on ``device``."""
    path, name = resolve_model_path(name_or_path)
    from geoseg.models.onnx import is_onnx_file, load_onnx_model

    if is_onnx_file(path):
        return load_onnx_model(path, name, device)
    config, state = read_model_file(path)
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
    return LoadedModel(network, config, str(path), file_sha256(path), name)
