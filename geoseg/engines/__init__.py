"""Inference engines behind one interface: a batch of raw tiles in, uint8 class values (and uint8
probabilities) out.

``torch`` runs the PyTorch network; ``onnx`` runs the same network exported to ONNX (or an
imported ONNX model) under ONNX Runtime. Normalisation, nodata fill, test-time augmentation,
scales, the CRF, argmax and softmax are the same torch code for both
(:class:`geoseg.engines.base.Engine`), so only the forward pass differs; plain inference under
ONNX Runtime runs argmax and softmax in the network's extended graph (:mod:`.graph`), and on the
CPU without torch at all (:class:`.onnx_cpu.CpuEngine`). ``auto`` picks ONNX Runtime on the CPU
(faster there, see docs/benchmarks.md) and PyTorch on CUDA.

This module imports neither torch nor ONNX Runtime: the client plans with it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from geoseg.errors import ModelError
from geoseg.models.ort_session import onnxruntime_available  # noqa: F401 (re-exported)
from geoseg.options import EngineName, choices

if TYPE_CHECKING:
    from geoseg.options import InferenceOptions

__all__ = [
    "ENGINES",
    "EngineName",
    "EngineOutput",
    "cuda_possible",
    "device_name",
    "check_engine",
    "onnxruntime_available",
    "resolve_engine",
]

ENGINES: tuple[str, ...] = choices(EngineName)


@dataclass
class EngineOutput:
    """One batch's results, whole tiles (margins included), on the host.

    ``classes``: N x H x W class values, the class raster's nodata (:func:`geoseg.classes.class_raster_dtype`) where the input had no data.
    ``probabilities``: N x K x H x W uint8 (0-255 = 0-1), 0 where the input had no data.
    ``logits``: N x K x H x W float32 scores, only when asked for (tests).
    """

    classes: np.ndarray
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None


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


def resolve_engine(
    engine: str, model_format: str, device_type: str, options: "InferenceOptions"
) -> str:
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


def cuda_possible() -> bool:
    """False where this machine certainly has no CUDA device (Linux without NVIDIA's driver
    or WSL's GPU device, or macOS), so ``auto`` picks the CPU without importing torch."""
    platform: str = sys.platform  # a variable: mypy would take the branch for its own platform only
    if platform.startswith("linux"):
        return any(
            os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")
        )
    return platform != "darwin"


def device_name(spec: str) -> str:
    """``cpu`` or ``cuda[:N]`` for ``--device`` (``auto``: CUDA when present), asking torch only
    where CUDA is possible: see :func:`geoseg.engines.infer.resolve_device` for the errors."""
    if str(spec).lower() == "cpu" or (str(spec).lower() == "auto" and not cuda_possible()):
        return "cpu"
    from geoseg.engines.infer import resolve_device

    return str(resolve_device(spec))
