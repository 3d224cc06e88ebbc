"""What a worker needs of an inference engine, declared once: every engine
(:class:`geoseg.engines.base.Engine` and its subclasses, and the torch-free
:class:`geoseg.engines.onnx_cpu.CpuEngine`) satisfies :class:`InferenceEngine`. This module
imports neither torch nor ONNX Runtime."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from geoseg.engines import EngineOutput


class InferenceEngine(Protocol):
    """A model ready to run on one device: raw tiles in, class values (and probabilities) out."""

    @property
    def name(self) -> str:
        """Engine name as ``--engine`` spells it."""

    @property
    def uses_torch(self) -> bool:
        """Whether the worker sets torch's threads for this engine."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held by a worker around :meth:`run`: one batch at a time on the device."""

    def run(
        self,
        raw: np.ndarray,
        valid: np.ndarray,
        probabilities: bool = False,
        keep_logits: bool = False,
    ) -> EngineOutput:
        """Classes (and uint8 probabilities) for raw N x C x H x W tiles in the scene's dtype,
        with ``valid`` (N x H x W, bool) saying which pixels hold data."""
