"""The fused ONNX graph on ONNX Runtime: its sessions (built once, cached in the per-user model
cache by content hash) and a run over raw tiles in CPU-sized pieces; shared by the CPU engine
and the torch-backed ONNX engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from geoseg.classes import class_raster_dtype
from geoseg.engines import EngineOutput
from geoseg.engines.graph import CLASSES, PROBABILITIES, VALID, fused_graph
from geoseg.model_cache import cache_added, cache_hit
from geoseg.models.config import ModelConfig
from geoseg.models.ort_session import make_session
from geoseg.normalize import normalize

if TYPE_CHECKING:
    from geoseg.models.onnx_summary import OnnxSummary


#: On the CPU a batch goes through ONNX Runtime in runs of about this many pixels (at least one
#: tile): MLAS spreads each image over all threads, so a bigger run is no faster, and the arena
#: grows with the largest run. The built-in architecture at 512² tiles, 2 threads: runs of 4
#: tiles took 0.32 s per 4 tiles and 511 MB of arena, runs of 2 tiles 0.29 s and 263 MB; runs
#: of 1 tile made predict of a 4096² scene no slower (7.21 s against 7.35 s, three runs each)
#: and its peak memory 140 MB lower (461 against 604 MB).
CPU_RUN_PIXELS = 512 * 512


def cpu_runs(batch: int, height: int, width: int) -> list[slice]:
    """The slices of a batch of ``batch`` tiles that one CPU session run takes each."""
    step = max(1, CPU_RUN_PIXELS // max(1, height * width))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


class FusedSessions:
    """The sessions of a model's fused graph (:func:`geoseg.engines.graph.fused_graph`): with
    probabilities or without (a run uses one of the two), each built on first use.

    With ``cache_key`` (the model's content hash) a fused graph is written once into the
    per-user model cache and later sessions load that file: building it needs the ``onnx``
    package, whose import alone took 0.45 s of every run."""

    def __init__(
        self,
        model: str | Path | bytes,
        config: ModelConfig,
        device: Any,
        threads: int | None,
        proto: Any = None,
        summary: "OnnxSummary | None" = None,
        cache_key: str | None = None,
    ) -> None:
        self.model, self.config, self.device, self.threads = model, config, device, threads
        self._proto = proto
        self._summary = summary
        self.cache_key = cache_key if not isinstance(model, bytes) else None
        self._sessions: dict[bool, Any] = {}

    def proto(self) -> Any:
        """The network's ONNX graph (parsed from the model once, if not given)."""
        if self._proto is None:
            import onnx

            self._proto = (
                onnx.load_from_string(self.model)
                if isinstance(self.model, bytes)
                else onnx.load(str(self.model))
            )
        return self._proto

    def summary(self) -> "OnnxSummary":
        """Opset, inputs and outputs of the network's graph, read without the ``onnx`` package."""
        if self._summary is None:
            from geoseg.models.onnx_summary import read_summary, summarize

            self._summary = (
                summarize(self.model) if isinstance(self.model, bytes) else read_summary(self.model)
            )
        return self._summary

    @property
    def image_input(self) -> str:
        """The name of the graph's image input."""
        return self.summary().image_inputs[0].name

    def fused_available(self) -> bool:
        """Whether the fused graph can run this model (opset 13 or later)."""
        from geoseg.engines.graph import MIN_OPSET

        return self.summary().opset >= MIN_OPSET

    def get(self, probabilities: bool) -> Any | None:
        """The session (None: this model's opset is too old for the fused graph)."""
        if probabilities not in self._sessions:
            session = None
            if self.fused_available():
                cached = self._cached_path(probabilities)
                if cached is not None and cache_hit(cached):
                    try:
                        session = make_session(str(cached), self.device, self.threads)
                    except Exception:  # noqa: BLE001 - unreadable cache entry: build it again
                        cached.unlink(missing_ok=True)
                if session is None:
                    session = make_session(
                        self._fused_model(probabilities, cached), self.device, self.threads
                    )
            self._sessions[probabilities] = session
        return self._sessions[probabilities]

    def _outputs(self) -> tuple[list[int], Any, int]:
        """Class values, class raster dtype and nodata: what the fused graph's lookup writes."""
        values = [c.value for c in self.config.classes]
        dtype, nodata = class_raster_dtype(values)
        return values, dtype, nodata

    def _cached_path(self, probabilities: bool) -> Path | None:
        if self.cache_key is None:
            return None
        return fused_cache_path(self.cache_key, *self._outputs(), probabilities)

    def _fused_model(self, probabilities: bool, cached: Path | None) -> bytes:
        """The fused graph built now, serialized (and written to ``cached`` for later runs)."""
        values, dtype, nodata = self._outputs()
        graph = fused_graph(self.proto(), values, np.dtype(dtype), nodata, probabilities)
        assert graph is not None  # fused_available() said the opset is recent enough
        data: bytes = graph.SerializeToString()
        if cached is not None:
            from geoseg.fs import write_bytes_atomic

            write_bytes_atomic(cached, data)
            cache_added(cached)
        return data


def fused_cache_path(
    cache_key: str, values: Sequence[int], dtype: Any, nodata: int, probabilities: bool
) -> Path:
    """Where the fused graph of the model with content hash ``cache_key`` is kept for these
    class values and outputs, by this geoseg release and fused-graph format."""
    import hashlib
    import json

    from geoseg.engines.graph import FUSED_FORMAT
    from geoseg.models.onnx_file import cache_dir
    from geoseg.version import __version__

    variant = json.dumps(
        [FUSED_FORMAT, __version__, list(values), str(np.dtype(dtype)), int(nodata), probabilities]
    )
    return (
        cache_dir() / f"{cache_key}-fused-{hashlib.sha256(variant.encode()).hexdigest()[:16]}.onnx"
    )


def run_fused(
    sessions: FusedSessions,
    session: Any,
    raw: np.ndarray,
    valid: np.ndarray,
    probabilities: bool,
    config: ModelConfig,
) -> EngineOutput:
    """A fused session (one of ``sessions``) over raw tiles on the CPU, in :func:`cpu_runs`,
    each run normalized just before it goes in: one run's float32 copy is alive at a time, not
    the batch's (12 MB for four 512² tiles of 3 bands)."""
    names = [CLASSES, PROBABILITIES] if probabilities else [CLASSES]
    image = sessions.image_input
    mask = valid[:, None]
    runs = [
        session.run(
            names, {image: normalize(raw[r], valid[r], config.mean, config.std), VALID: mask[r]}
        )
        for r in cpu_runs(raw.shape[0], *raw.shape[2:])
    ]
    out = runs[0] if len(runs) == 1 else [np.concatenate(parts) for parts in zip(*runs)]
    return EngineOutput(classes=out[0][:, 0], probabilities=out[1] if probabilities else None)
