"""The ONNX Runtime engine: one inference session per model and worker, created once.

On the CPU the network's own graph reads the normalized batch in place (a numpy view of the
torch tensor) and its logits come back as a torch tensor without a copy; on CUDA
(``onnxruntime-gpu``) input and output stay on the device through I/O binding. Sessions and the
torch-free CPU path are :mod:`geoseg.engines.onnx_cpu`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.engines import EngineOutput
from geoseg.engines.base import Engine
from geoseg.engines.fused import FusedSessions, cpu_runs, run_fused
from geoseg.engines.graph import CLASSES, PROBABILITIES, VALID
from geoseg.models.config import ModelConfig
from geoseg.models.onnx_summary import OnnxSummary
from geoseg.models.ort_session import make_session
from geoseg.options import InferenceOptions


class OnnxEngine(Engine):
    """A network in an ONNX file under ONNX Runtime.

    For plain inference (no TTA, scales or CRF; no float logits asked for) and opset 13 or
    later, the session runs the network extended by :func:`geoseg.engines.graph.fused_graph`:
    normalized tiles in (on CUDA from :meth:`Engine.normalize` on the device; on the CPU from
    numpy, as :class:`geoseg.engines.onnx_cpu.CpuEngine` does without torch), class values and
    uint8 probabilities out. Otherwise the network's own graph runs between the torch steps of
    :class:`Engine`.
    """

    name = "onnx"

    def __init__(
        self,
        model: str | Path | bytes,
        config: ModelConfig,
        device: torch.device,
        options: InferenceOptions,
        threads: int | None = None,
        proto: Any = None,
        summary: OnnxSummary | None = None,
        cache_key: str | None = None,
    ) -> None:
        super().__init__(config, device, options)
        self.model, self.threads = model, threads
        self.sessions = FusedSessions(model, config, device, threads, proto, summary, cache_key)
        self._session: Any = None
        self.classes = len(config.classes)

    @property
    def session(self) -> Any:
        """The session of the network's own graph (logits out), created on first use."""
        if self._session is None:
            self._session = make_session(self.model, self.device, self.threads)
            self.input_name = self._session.get_inputs()[0].name
            self.output_name = self._session.get_outputs()[0].name
        return self._session

    def proto(self) -> Any:
        """The network's ONNX graph."""
        return self.sessions.proto()

    def fused_session(self, probabilities: bool) -> Any | None:
        """The session of the fused graph (None: this model's opset is too old for it)."""
        return self.sessions.get(probabilities)

    @torch.inference_mode()
    def run(
        self,
        raw: np.ndarray,
        valid: np.ndarray,
        probabilities: bool = False,
        keep_logits: bool = False,
    ) -> EngineOutput:
        session = (
            self.fused_session(probabilities) if not keep_logits and self.options.plain else None
        )
        if session is None:
            return super().run(raw, valid, probabilities, keep_logits)
        if self.device.type != "cuda":  # numpy and the fused graph: what CpuEngine runs
            return run_fused(self.sessions, session, raw, valid, probabilities, self.config)
        mask = self.upload(valid)
        x = self.normalize(self.upload(raw), mask).contiguous()
        mask = mask[:, None].contiguous()
        names = [CLASSES, PROBABILITIES] if probabilities else [CLASSES]
        image = self.sessions.image_input
        # inputs stay on the GPU; only the uint8 outputs are copied to the host
        binding = session.io_binding()
        index = self.device.index or 0
        binding.bind_input(image, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_input(VALID, "cuda", index, np.bool_, tuple(mask.shape), mask.data_ptr())
        for n in names:
            binding.bind_output(n, "cpu")
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        out = binding.copy_outputs_to_cpu()
        return EngineOutput(classes=out[0][:, 0], probabilities=out[1] if probabilities else None)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        session = self.session
        if self.device.type != "cuda":
            xs = x.numpy()
            ys = [
                session.run([self.output_name], {self.input_name: xs[r]})[0]
                for r in cpu_runs(xs.shape[0], *xs.shape[2:])
            ]
            return torch.from_numpy(ys[0] if len(ys) == 1 else np.concatenate(ys))
        binding = session.io_binding()
        binding.bind_input(
            self.input_name,
            "cuda",
            self.device.index or 0,
            np.float32,
            tuple(x.shape),
            x.data_ptr(),
        )
        out = torch.empty(
            (x.shape[0], self.classes, *x.shape[2:]), dtype=torch.float32, device=self.device
        )
        binding.bind_output(
            self.output_name,
            "cuda",
            self.device.index or 0,
            np.float32,
            tuple(out.shape),
            out.data_ptr(),
        )
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return out
