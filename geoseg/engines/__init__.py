"""Inference engines behind one interface: a batch of raw tiles in, uint8 class values (and uint8
probabilities) out.

``torch`` runs the PyTorch network; ``onnx`` runs the same network exported to ONNX (or an
imported ONNX model) under ONNX Runtime. Normalisation, nodata fill, test-time augmentation,
scales, the CRF, argmax and softmax are the same code for both (:class:`geoseg.engines.base.Engine`),
so only the forward pass differs. ``auto`` picks ONNX Runtime on the CPU (faster there, see
docs/benchmarks.md) and PyTorch on CUDA.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from geoseg.errors import ModelError
from geoseg.options import EngineName, choices

if TYPE_CHECKING:
    from geoseg.infer import InferenceOptions

__all__ = ["ENGINES", "EngineName", "check_engine", "onnxruntime_available", "resolve_engine"]

ENGINES: tuple[str, ...] = choices(EngineName)


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def torch_only_options(options: "InferenceOptions") -> list[str]:
    """The options that tune the PyTorch forward pass and mean nothing to ONNX Runtime."""
    named = []
    if options.precision not in ("fp32", "auto"):
        named.append(f"--precision {options.precision}")
    if options.channels_last:
        named.append("--channels-last")
    if options.compile:
        named.append("--compile")
    return named


def check_engine(engine: str, model_format: str, options: "InferenceOptions") -> None:
    """Refuse, before any work, an engine that cannot run this model with these options."""
    if engine not in ENGINES:
        raise ModelError(f"unknown --engine {engine!r}; use {', '.join(ENGINES)}")
    if model_format == "onnx" and engine == "torch":
        raise ModelError("an ONNX model runs under ONNX Runtime only; use --engine onnx or auto")
    if engine == "onnx" or model_format == "onnx":
        if not onnxruntime_available():
            raise ModelError(
                "--engine onnx (and ONNX models) need ONNX Runtime, which is not installed; "
                "pip install onnxruntime (or onnxruntime-gpu for CUDA)"
            )
        torch_only = torch_only_options(options)
        if torch_only:
            raise ModelError(
                f"{' and '.join(torch_only)} tune the PyTorch engine, not ONNX Runtime; drop them "
                "or use --engine torch" + (" (with a .pt model)" if model_format == "onnx" else "")
            )


def resolve_engine(engine: str, model_format: str, device_type: str, options: "InferenceOptions") -> str:
    """The concrete engine for ``auto``: ONNX Runtime on the CPU, PyTorch on CUDA (channels-last,
    bf16 where the GPU has it); PyTorch whenever a torch-only option is set or ONNX Runtime is
    missing. ONNX models always run under ONNX Runtime."""
    check_engine(engine, model_format, options)
    if engine != "auto":
        return engine
    if model_format == "onnx":
        return "onnx"
    if device_type == "cuda" or torch_only_options(options) or not onnxruntime_available():
        return "torch"
    return "onnx"
