"""The ONNX Runtime engine: one inference session per model and worker, created once.

On the CPU the session reads the normalized batch in place (a numpy view of the torch tensor)
and its logits come back as a torch tensor without a copy; on CUDA (``onnxruntime-gpu``) input
and output stay on the device through I/O binding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.engines.base import Engine, EngineOutput
from geoseg.engines.graph import CLASSES, PROBABILITIES, RAW, VALID, fused_graph
from geoseg.infer import InferenceOptions
from geoseg.io import class_raster_dtype
from geoseg.models.checkpoint import ModelConfig


def make_session(model: str | Path | bytes, device: torch.device, threads: int | None = None) -> Any:
    """An ONNX Runtime session for ``model`` (a path or the file's bytes) on ``device``, using
    ``threads`` intra-op threads (default: torch's count, which the worker already limits)."""
    import onnxruntime as ort

    from geoseg.errors import ModelError

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no per-shape memory pattern: it kept one planned block per input shape (full batches and
    # the last, smaller one), 340 MB more peak memory for the built-in model at 512², no faster
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError(
                "--engine onnx on CUDA needs ONNX Runtime's CUDA provider; pip install onnxruntime-gpu, "
                "or use --engine torch"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=providers)


#: Raw pixel types the fused graph takes as they are (ONNX ``Cast`` converts them to float32).
_GRAPH_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                                            np.int64, np.uint64, np.float16, np.float32, np.float64))


class OnnxEngine(Engine):
    """A network in an ONNX file under ONNX Runtime.

    For plain inference (no TTA, scales or CRF; no float logits asked for) and opset 13 or
    later, the session runs a fused graph (:func:`geoseg.engines.graph.fused_graph`): raw pixels
    in, class values and uint8 probabilities out, one session per input dtype and output set.
    Otherwise the network's own graph runs between the shared torch steps of :class:`Engine`.
    """

    name = "onnx"

    def __init__(
        self, model: str | Path | bytes, config: ModelConfig, device: torch.device,
        options: InferenceOptions, threads: int | None = None, proto: Any = None,
    ) -> None:
        super().__init__(config, device, options)
        self.model, self.threads = model, threads
        self._proto = proto
        self._session: Any = None
        self._fused: dict[tuple[str, bool], Any] = {}
        self.classes = len(config.classes)
        self._lookup = [c.value for c in config.classes]
        self._class_dtype, self._class_nodata = class_raster_dtype(self._lookup)

    @property
    def session(self) -> Any:
        """The session of the network's own graph (logits out), created on first use."""
        if self._session is None:
            self._session = make_session(self.model, self.device, self.threads)
            self.input_name = self._session.get_inputs()[0].name
            self.output_name = self._session.get_outputs()[0].name
        return self._session

    def proto(self) -> Any:
        """The network's ONNX graph (loaded from the model once, if not given)."""
        if self._proto is None:
            import onnx

            self._proto = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                           else onnx.load(str(self.model)))
        return self._proto

    def fused_session(self, dtype: np.dtype, probabilities: bool) -> Any | None:
        """The fused session for raw input of ``dtype`` (None: this model's opset is too old)."""
        key = (np.dtype(dtype).str, probabilities)
        if key not in self._fused:
            graph = fused_graph(self.proto(), self.config.mean, self.config.std, np.dtype(dtype), self._lookup,
                                np.dtype(self._class_dtype), self._class_nodata, probabilities)
            self._fused[key] = (None if graph is None
                                else make_session(graph.SerializeToString(), self.device, self.threads))
        return self._fused[key]

    def run(
        self, raw: np.ndarray, valid: np.ndarray, probabilities: bool = False, keep_logits: bool = False,
    ) -> EngineOutput:
        if not keep_logits and self.options.plain:
            if raw.dtype not in _GRAPH_DTYPES:  # e.g. complex: as the torch path reads it
                raw = raw.astype(np.float32)
            raw = np.ascontiguousarray(raw)
            session = self.fused_session(raw.dtype, probabilities)
            if session is not None:
                names = [CLASSES, PROBABILITIES] if probabilities else [CLASSES]
                mask = np.ascontiguousarray(valid, dtype=np.bool_)[:, None]
                out = session.run(names, {RAW: raw, VALID: mask})
                return EngineOutput(classes=out[0][:, 0], probabilities=out[1] if probabilities else None)
        return super().run(raw, valid, probabilities, keep_logits)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        session = self.session
        if self.device.type != "cuda":
            (y,) = session.run([self.output_name], {self.input_name: x.numpy()})
            return torch.from_numpy(y)
        binding = session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device.index or 0, np.float32,
                           tuple(x.shape), x.data_ptr())
        out = torch.empty((x.shape[0], self.classes, *x.shape[2:]), dtype=torch.float32, device=self.device)
        binding.bind_output(self.output_name, "cuda", self.device.index or 0, np.float32,
                            tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return out
