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
from geoseg.engines.graph import CLASSES, PROBABILITIES, VALID, fused_graph, graph_input_name
from geoseg.infer import InferenceOptions
from geoseg.io import class_raster_dtype
from geoseg.models.checkpoint import ModelConfig

#: On the CPU a batch goes through ONNX Runtime in runs of about this many pixels (at least one
#: tile): MLAS spreads each image over all threads, so a bigger run is no faster, and the arena
#: grows with the largest run. The built-in architecture at 512² tiles, 2 threads: runs of 4
#: tiles took 0.32 s per 4 tiles and 511 MB of arena, runs of 2 tiles 0.29 s and 263 MB.
CPU_RUN_PIXELS = 2 * 512 * 512


def cpu_runs(batch: int, height: int, width: int) -> list[slice]:
    """The slices of a batch of ``batch`` tiles that one CPU session run takes each."""
    step = max(1, CPU_RUN_PIXELS // max(1, height * width))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


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
    # idle intra-op threads sleep instead of spinning: the reader thread and the writer need
    # those cores between batches (spinning made a cheap network's predict 8 % slower)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


class OnnxEngine(Engine):
    """A network in an ONNX file under ONNX Runtime.

    For plain inference (no TTA, scales or CRF; no float logits asked for) and opset 13 or
    later, the session runs the network extended by :func:`geoseg.engines.graph.fused_graph`:
    normalized tiles in (from :meth:`Engine.normalize`, on the same device), class values and
    uint8 probabilities out. Otherwise the network's own graph runs between the torch steps of
    :class:`Engine`.
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
        self._fused: dict[tuple[bool, bool], Any] = {}
        self._image_input: str | None = None
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
        """The network's ONNX graph (loaded from the model once, if not given)."""
        if self._proto is None:
            import onnx

            self._proto = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                           else onnx.load(str(self.model)))
        return self._proto

    def fused_session(self, probabilities: bool, masked: bool) -> Any | None:
        """The session of the fused graph (None: this model's opset is too old for it)."""
        key = (probabilities, masked)
        if key not in self._fused:
            values = [c.value for c in self.config.classes]
            dtype, nodata = class_raster_dtype(values)
            graph = fused_graph(self.proto(), values, np.dtype(dtype), nodata, probabilities, masked)
            self._fused[key] = (
                None if graph is None else make_session(graph.SerializeToString(), self.device, self.threads))
        return self._fused[key]

    @torch.inference_mode()
    def run(
        self, raw: np.ndarray, valid: np.ndarray, probabilities: bool = False, keep_logits: bool = False,
    ) -> EngineOutput:
        masked = not bool(valid.all())  # most batches hold no nodata: a graph without the mask
        session = self.fused_session(probabilities, masked) if not keep_logits and self.options.plain else None
        if session is None:
            return super().run(raw, valid, probabilities, keep_logits)
        mask = self.upload(valid)
        x = self.normalize(self.upload(raw), mask).contiguous()
        mask = mask[:, None].contiguous()
        names = [CLASSES, PROBABILITIES] if probabilities else [CLASSES]
        if self._image_input is None:  # looked up once, not per batch
            self._image_input = graph_input_name(self.proto())
        image = self._image_input
        if self.device.type != "cuda":
            xs, ms = x.numpy(), mask.numpy()
            runs = [session.run(names, {image: xs[r], VALID: ms[r]} if masked else {image: xs[r]})
                    for r in cpu_runs(*xs.shape[:1], *xs.shape[2:])]
            out = runs[0] if len(runs) == 1 else [np.concatenate(parts) for parts in zip(*runs)]
        else:  # inputs stay on the GPU; only the uint8 outputs are copied to the host
            binding = session.io_binding()
            index = self.device.index or 0
            binding.bind_input(image, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
            if masked:
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
            ys = [session.run([self.output_name], {self.input_name: xs[r]})[0]
                  for r in cpu_runs(xs.shape[0], *xs.shape[2:])]
            return torch.from_numpy(ys[0] if len(ys) == 1 else np.concatenate(ys))
        binding = session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device.index or 0, np.float32,
                           tuple(x.shape), x.data_ptr())
        out = torch.empty((x.shape[0], self.classes, *x.shape[2:]), dtype=torch.float32, device=self.device)
        binding.bind_output(self.output_name, "cuda", self.device.index or 0, np.float32,
                            tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return out
