"""Per worker process: one loaded model per content hash, device and tuning (the model file
from :class:`geoseg.dask.plugin.ModelPlugin` when the path is not there), one engine per
model and options, and the batch size that last fitted on the device."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import CheckpointError, first_line
from geoseg.model_cache import cache_hit, model_cache_dir
from geoseg.options import InferenceOptions

if TYPE_CHECKING:
    from geoseg.engines.protocol import InferenceEngine


_MODELS: dict[tuple[str, str, bool, bool], Any] = {}


_LOCK = threading.Lock()


_BATCH_LIMITS: dict[tuple[str, str], int] = {}


log = logging.getLogger("geoseg")


def worker_model(
    path: str,
    sha256: str,
    device: str,
    channels_last: bool = False,
    compile: bool = False,
) -> Any:
    """The loaded model with content hash ``sha256`` on ``device`` in this process, loaded once:
    from ``path`` when that file is here and has that hash, else from the model cache."""
    key = (sha256, device, channels_last, compile)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        return _tuned_model(path, sha256, device, channels_last, compile)


def _tuned_model(path: str, sha256: str, device: str, channels_last: bool, compile: bool) -> Any:
    """The cached model for these settings, loaded and tuned if new; the caller holds ``_LOCK``."""
    key = (sha256, device, channels_last, compile)
    model = _MODELS.get(key)
    if model is None:
        model = _load(path, sha256, device)
        if channels_last:
            import torch

            model.network = model.network.to(memory_format=torch.channels_last)
        if compile:
            model.network = _compiled(model.network)
        _MODELS[key] = model
    return model


def worker_model_file(path: str, sha256: str) -> str:
    """The model file with content hash ``sha256`` on this worker: ``path`` when it is here with
    that hash, else the copy the worker plugin put into the model cache (private to this user)."""
    from geoseg.models.config import file_sha256

    if os.path.isfile(path) and file_sha256(path) == sha256:
        return path
    cached = model_cache_dir() / f"{sha256}.pt"
    if cache_hit(cached) and file_sha256(cached) == sha256:
        return str(cached)
    raise CheckpointError(
        f"model {path} is not on this worker, or differs from the client's copy (content hash "
        "mismatch); give every worker the same file"
    )


def _load(path: str, sha256: str, device: str) -> Any:
    """Load from ``path`` or the cache, whichever holds bytes with that hash; the bytes hashed
    are the bytes loaded (for ``.pt`` files), so a file swapped after the check is never loaded."""
    from geoseg.models.load import load_model

    for candidate in (Path(path), model_cache_dir() / f"{sha256}.pt"):
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            model = load_model(candidate, device=device, data=data)
            model.path = path
            return model
    raise CheckpointError(
        f"model {path} is not on this worker, or differs from the client's copy (content hash "
        "mismatch); give every worker the same file"
    )


_ENGINES: dict[tuple[Any, ...], InferenceEngine] = {}


def worker_engine(
    path: str,
    sha256: str,
    device: str,
    engine: str,
    options: InferenceOptions,
    threads: int | None = None,
) -> InferenceEngine:
    """The inference engine for a model on ``device`` in this process, built once per model hash,
    engine and options: ``auto`` resolves here, where the device is known (ONNX Runtime on the
    CPU, PyTorch with channels-last on CUDA); a ``.pt`` model is converted to ONNX once per hash
    (see :func:`geoseg.models.onnx.cached_onnx`), never per task. ``threads``: ONNX Runtime's
    intra-op threads for a new engine (default: torch's count where torch is loaded, else all).

    Plain inference under ONNX Runtime on the CPU from an ONNX file (an ONNX model, or a ``.pt``
    model converted before) is :class:`geoseg.engines.onnx_cpu.CpuEngine`: it imports no torch."""
    key = (sha256, device, engine, options)
    found = _ENGINES.get(key)
    if found is not None:
        return found
    with _LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = _ENGINES[key] = _build_engine(path, sha256, device, engine, options, threads)
    return found


def _build_engine(
    path: str, sha256: str, device: str, engine: str, options: InferenceOptions, threads: int | None
) -> InferenceEngine:
    from geoseg.engines import resolve_engine
    from geoseg.models.onnx_file import cached_onnx_path, is_onnx_file, read_onnx_model

    local = worker_model_file(path, sha256)
    fmt = "onnx" if is_onnx_file(local) else "torch"
    name = resolve_engine(engine, fmt, device.split(":")[0], options)
    if name == "onnx":
        # a .pt model is loaded (with torch) only to convert it, once per hash, and not kept
        onnx_file: str | Path = local
        if fmt == "torch":
            onnx_file = cached_onnx_path(sha256)
            if not cache_hit(onnx_file):
                from geoseg.models.onnx import cached_onnx

                onnx_file = cached_onnx(local, sha256)
        config, summary = read_onnx_model(onnx_file)
        # both files are named by the model's content hash; fused graphs are cached by it too
        if device == "cpu" and options.plain:
            from geoseg.engines.onnx_cpu import CpuEngine

            cpu = CpuEngine(onnx_file, config, options, threads, summary=summary, cache_key=sha256)
            if cpu.fused_available():
                return cpu
        import torch

        from geoseg.engines.ort import OnnxEngine

        return OnnxEngine(
            onnx_file,
            config,
            torch.device(device),
            options,
            threads,
            summary=summary,
            cache_key=sha256,
        )
    import torch

    from geoseg.engines.pytorch import TorchEngine

    if engine == "auto" and device.startswith("cuda"):
        options = replace(options, channels_last=True)
    model = _tuned_model(path, sha256, device, options.channels_last, options.compile)
    return TorchEngine(model.network, model.config, torch.device(device), options)


def _compiled(network: Any) -> Any:
    """``torch.compile`` the network; where compiling fails (no C compiler, unsupported op) the
    first call says so once and the network runs eagerly from then on."""
    import torch

    class CompiledOrEager(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.compiled: Any = torch.compile(net, dynamic=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.compiled is not None:
                try:
                    return self.compiled(x)
                except Exception as exc:  # noqa: BLE001 - compilation is an optimisation only
                    log.warning(
                        "geoseg: torch.compile failed (%s); running eagerly", first_line(exc)
                    )
                    self.compiled = None
            return self.net(x)

    return CompiledOrEager(network).eval()


def batch_limit(sha256: str, device: str, requested: int) -> int:
    """The batch size this worker uses for a model: ``requested``, or less after CUDA ran out of memory."""
    return min(requested, _BATCH_LIMITS.get((sha256, device), requested))


def lower_batch_limit(sha256: str, device: str, failed: int) -> int:
    """Halve the batch after an out-of-memory error; logged once per model and size."""
    new = max(1, failed // 2)
    key = (sha256, device)
    if _BATCH_LIMITS.get(key, failed + 1) > new:
        _BATCH_LIMITS[key] = new
        log.warning(
            "geoseg: %s ran out of memory at batch %d; using batch %d from now on",
            device,
            failed,
            new,
        )
    return new


def cuda_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA running out of memory (never where torch is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def set_torch_threads(n: int | None) -> None:
    """Limit torch's intra-op threads in this process (once), so workers do not oversubscribe."""
    if not n:
        return
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
