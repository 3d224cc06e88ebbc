"""Model files: weights plus everything predict needs, loaded without executing code.

A geoseg model file is ``torch.save({"geoseg": <JSON config>, "state_dict": <tensors>})`` and is
read back with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from geoseg.classes import ClassInfo
from geoseg.errors import CheckpointError, ModelError, first_line
from geoseg.models import create_model, output_stride
from geoseg.models.config import (
    BUILTIN_MODELS,
    DATA_DIR,
    DEFAULT_MODEL,
    FORMAT,
    FORMAT_VERSION,
    GLOBAL_RECEPTIVE_FIELD,
    MAX_BANDS,
    MAX_RECEPTIVE_FIELD,
    MAX_STRIDE,
    LoadedModel,
    ModelConfig,
    builtin_model_names,
    check_classes,
    file_sha256,
    resolve_model_path,
    validate_config,
)
from geoseg.models.dilation import GriddingWarning
from geoseg.models.receptive_field import NonLocalError, measure_receptive_field

#: The config side lives in :mod:`geoseg.models.config` (no torch); these names stay importable here.
__all__ = [
    "BUILTIN_MODELS",
    "DATA_DIR",
    "DEFAULT_MODEL",
    "FORMAT",
    "FORMAT_VERSION",
    "GLOBAL_RECEPTIVE_FIELD",
    "MAX_BANDS",
    "MAX_RECEPTIVE_FIELD",
    "MAX_STRIDE",
    "LoadedModel",
    "ModelConfig",
    "build_config",
    "builtin_model_names",
    "check_classes",
    "file_sha256",
    "load_pt_model",
    "read_model_file",
    "resolve_model_path",
    "save_model",
    "validate_config",
]


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
    from geoseg.fs import atomic_path

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(path, ".pt") as tmp:
        torch.save({"geoseg": config.to_json(), "state_dict": state}, tmp)
    return path


def _check_shapes(path: Path, config: ModelConfig, state: dict[str, Any]) -> None:
    """Build the network without memory (meta device) and compare its tensors with the file's,
    so the real build allocates no more than the file holds."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", GriddingWarning)
            network = create_model(
                config.arch, config.in_channels, len(config.classes), **config.arch_kwargs
            )
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
    path: str | os.PathLike[str],
    data: bytes | None = None,
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
        raise CheckpointError(
            f"{path} has a damaged geoseg config ({exc}); retrain the model"
        ) from exc
    if not isinstance(blob["state_dict"], dict):
        raise CheckpointError(f"{path} has no weights table; give a file written by 'geoseg train'")
    return config, blob["state_dict"]


def load_pt_model(
    path: Path,
    name: str,
    device: str | torch.device = "cpu",
    data: bytes | None = None,
) -> LoadedModel:
    """Load a ``.pt`` model file in eval mode on ``device`` (any format:
    :func:`geoseg.models.load.load_model`).

    The file is read once; its hash and its weights come from the same bytes (``data``, when the
    caller has read and checked them already), so the file cannot change in between."""
    if data is None:
        data = path.read_bytes()
    config, state = read_model_file(path, data)
    _check_shapes(path, config, state)
    with warnings.catch_warnings():
        # A trained model's dilation schedule is fixed; the warning is for whoever trains one.
        warnings.simplefilter("ignore", GriddingWarning)
        network = create_model(
            config.arch, config.in_channels, len(config.classes), **config.arch_kwargs
        )
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {config.arch} ({first_line(exc)})"
        ) from exc
    network.eval().to(device)
    return LoadedModel(network, config, str(path), hashlib.sha256(data).hexdigest(), name)
