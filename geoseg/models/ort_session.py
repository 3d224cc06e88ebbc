"""ONNX Runtime sessions for a model file (bytes or path) on a device, and whether ONNX
Runtime is installed; below the engines, so checking an exported model needs no engine."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def default_threads() -> int:
    """Intra-op threads when the caller gives none: torch's count where torch is loaded (the
    worker limits it), else this process's CPUs."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_session(model: str | Path | bytes, device: Any = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime session for ``model`` (a path or the file's bytes) on ``device`` (``cpu``,
    ``cuda[:N]`` or a ``torch.device``), using ``threads`` intra-op threads."""
    import onnxruntime as ort

    from geoseg.errors import ModelError

    kind = getattr(device, "type", str(device).split(":")[0])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no per-shape memory pattern: it kept one planned block per input shape (full batches and
    # the last, smaller one), 340 MB more peak memory for the built-in model at 512², no faster
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    # idle intra-op threads sleep instead of spinning: the reader thread and the writer need
    # those cores between batches (spinning made a cheap network's predict 8 % slower)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError(
                "--engine onnx on CUDA needs ONNX Runtime's CUDA provider; pip install onnxruntime-gpu, "
                "or use --engine torch"
            )
        index = getattr(device, "index", None)
        if index is None and ":" in str(device):
            index = int(str(device).split(":")[1])
        providers = [("CUDAExecutionProvider", {"device_id": index or 0}), "CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=providers)
