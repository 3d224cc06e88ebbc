"""ONNX geoseg model files, read and checked without torch or the ``onnx`` package: what planning
a run and the CPU engine need (``geoseg.models.onnx`` exports, imports and converts, with torch).

An ONNX geoseg model is a plain ONNX file (N x C x H x W normalized float32 in, N x K x H x W
logits out, height and width free) whose ``metadata_props`` hold the same JSON config a ``.pt``
model file carries (key ``geoseg``). ONNX files are protobuf: reading one runs no code
(:mod:`geoseg.models.onnx_summary` reads the few fields checked), and the checks below (one
rank-4 float input, free spatial size, a rank-4 output, weights inside the file, counts that
match) run before any session is built.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

from geoseg.errors import CheckpointError, ModelError, first_line
from geoseg.models.config import ModelConfig, validate_config
from geoseg.models.onnx_summary import FLOAT, OnnxSummary, read_summary

#: metadata_props key holding the geoseg config JSON.
METADATA_KEY = "geoseg"
#: ONNX opset of exported models: ONNX Runtime 1.17 and later run it.
OPSET = 18
ONNX_MAGIC_SUFFIXES = (".onnx",)


def is_onnx_file(path: str | os.PathLike[str]) -> bool:
    """An ONNX file by name, or by content (a protobuf, not a PyTorch zip archive): workers keep
    received model files under their hash, without the suffix."""
    import zipfile

    if str(path).lower().endswith(ONNX_MAGIC_SUFFIXES):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    # ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    return not zipfile.is_zipfile(path) and head[:1] == b"\x08"


def cache_dir() -> Path:
    """Where ONNX files converted from ``.pt`` models are kept, by content hash: the worker's
    per-user model cache (mode 0700, :func:`geoseg.model_cache.model_cache_dir`)."""
    from geoseg.model_cache import model_cache_dir

    return model_cache_dir()


def parse_onnx(path: str | os.PathLike[str]) -> Any:
    """The ModelProto of an ONNX file (protobuf: parsing runs no code); one line if it is not one."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not an ONNX model ({first_line(exc)})") from None


def check_graph(
    summary: OnnxSummary, path: str | os.PathLike[str]
) -> tuple[int | None, int | None]:
    """Check what geoseg needs of an ONNX graph (:func:`geoseg.models.onnx_summary.read_summary`);
    returns the input channels and output classes where the graph fixes them."""
    if summary.external_weights:
        raise CheckpointError(
            f"{path} keeps its weights in external files; save it as one file "
            "(onnx.save(model, path, save_as_external_data=False))"
        )
    inputs = summary.image_inputs
    if len(inputs) != 1:
        raise ModelError(
            f"{path} has {len(inputs)} inputs; geoseg needs one N x C x H x W image input"
        )
    shape = inputs[0].dims
    if len(shape) != 4:
        raise ModelError(
            f"{path}: input {inputs[0].name!r} has rank {len(shape)}; geoseg needs rank 4 (N x C x H x W)"
        )
    if inputs[0].elem_type != FLOAT:
        raise ModelError(
            f"{path}: input {inputs[0].name!r} is not float32; geoseg feeds normalized float32"
        )
    if isinstance(shape[2], int) and shape[2] > 0 or isinstance(shape[3], int) and shape[3] > 0:
        raise ModelError(
            f"{path}: input size is fixed at {shape[2]}x{shape[3]}, so tiles cannot be fed; re-export "
            "it with free height and width (torch.onnx.export dynamic_shapes, tf2onnx without fixed shapes)"
        )
    if not summary.outputs:
        raise ModelError(f"{path} has no outputs")
    out = summary.outputs[0].dims
    if out and len(out) != 4:
        raise ModelError(
            f"{path}: output {summary.outputs[0].name!r} has rank {len(out)}; geoseg needs N x K x H x W logits"
        )
    channels = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else None
    classes = out[1] if out and isinstance(out[1], int) and out[1] > 0 else None
    return channels, classes


def check_counts(config: ModelConfig, channels: int | None, classes: int | None, path: Any) -> None:
    n = config.in_channels
    for what, values in (("mean", config.mean), ("std", config.std), ("bands", config.band_names)):
        if len(values) != n:
            raise ModelError(
                f"{path}: {len(values)} {what} values for {n} input channels; give one per channel"
            )
    if channels is not None and channels != n:
        raise ModelError(
            f"{path}: the model takes {channels} channels but {n} bands, means and stds are given"
        )
    if classes is not None and classes != len(config.classes):
        raise ModelError(
            f"{path}: the model outputs {classes} classes but {len(config.classes)} are named; name one per output channel"
        )
    if any(s <= 0 for s in config.std):
        raise ModelError(f"{path}: every --std value must be positive")


def read_onnx_model(path: str | os.PathLike[str]) -> tuple[ModelConfig, OnnxSummary]:
    """Config and checked graph summary of an ONNX geoseg model, without the ``onnx`` package;
    no session is built yet."""
    summary = read_summary(path)
    channels, classes = check_graph(summary, path)
    meta = summary.metadata
    if METADATA_KEY not in meta:
        raise CheckpointError(
            f"{path} is an ONNX model without geoseg metadata; run 'geoseg import {path} -o MODEL.onnx "
            "--classes ... --mean ... --std ...' first"
        )
    try:
        config = ModelConfig.from_json(meta[METADATA_KEY])
        validate_config(config, architecture=False)  # stride, receptive field, bands: bounded
    except (CheckpointError, ModelError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path} has damaged geoseg metadata ({exc}); run 'geoseg import' again"
        ) from None
    check_counts(config, channels, classes, path)
    return config, summary


def write_onnx_model(proto: Any, path: Path, config: ModelConfig) -> Path:
    """Write ``proto`` with ``config`` in its metadata, atomically."""
    import onnx

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, config.to_json()
    from geoseg.fs import atomic_path

    with atomic_path(path, ".onnx") as tmp:
        onnx.save(proto, str(tmp), save_as_external_data=False)
    return path


def cached_onnx_path(sha256: str) -> Path:
    """Where the ONNX conversion of the ``.pt`` model with content hash ``sha256`` is kept (by
    this opset and torch release, read from the installed package without importing torch)."""
    torch_release = version("torch").split("+")[0]
    return cache_dir() / f"{sha256}-opset{OPSET}-torch{torch_release}.onnx"
