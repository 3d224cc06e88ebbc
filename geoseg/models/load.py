"""One model loader for every file format: a ``.pt`` file through :mod:`.checkpoint` (torch), an
ONNX file through :mod:`.onnx` (ONNX Runtime). ``geoseg.load_model``, planning and the worker
load models here; the format modules do not import each other or this one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from geoseg.errors import CheckpointError, ModelError
from geoseg.models.config import LoadedModel, file_sha256, resolve_model_path
from geoseg.models.onnx_file import cached_onnx_path, is_onnx_file, read_onnx_model

if TYPE_CHECKING:
    import torch


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    device: "str | torch.device" = "cpu",
    data: bytes | None = None,
) -> LoadedModel:
    """Load a model (``None`` = the built-in one, a ``.pt`` file or an ONNX geoseg model) in eval
    mode on ``device``. ``data``: the ``.pt`` file's bytes, when the caller has read and checked
    them already (its hash and weights then come from the same bytes)."""
    path, name = resolve_model_path(name_or_path)
    if is_onnx_file(path):
        from geoseg.models.onnx import load_onnx_model

        return load_onnx_model(path, name, device)
    from geoseg.models.checkpoint import load_pt_model

    return load_pt_model(path, name, device, data)


def read_model_config(name_or_path: str | os.PathLike[str] | None = None) -> LoadedModel:
    """A model's config, path, hash and name, its network not built (``network`` is None): what
    planning a run needs. An ONNX model, and a ``.pt`` model whose ONNX conversion is cached
    (written only after that file, byte for byte, was loaded and checked), are read without
    torch; any other ``.pt`` file is loaded and checked with it (and its network kept)."""
    path, name = resolve_model_path(name_or_path)
    sha256 = file_sha256(path)
    if is_onnx_file(path):
        return LoadedModel(None, read_onnx_model(path)[0], str(path), sha256, name, format="onnx")
    from geoseg.model_cache import cache_hit

    converted = cached_onnx_path(sha256)
    if cache_hit(converted):
        try:
            return LoadedModel(None, read_onnx_model(converted)[0], str(path), sha256, name)
        except (CheckpointError, ModelError):
            pass  # a damaged cache entry: the model file itself decides
    from geoseg.models.checkpoint import load_pt_model

    return load_pt_model(path, name)
