"""ONNX Runtime without torch: sessions, the fused graph's sessions, and the CPU engine that runs
plain inference (no TTA, scales or CRF) from raw tiles to uint8 classes and probabilities.

A CPU worker running an ONNX model (or a ``.pt`` model already converted, see
:func:`geoseg.models.onnx_file.cached_onnx_path`) never imports torch: one second and about
500 MB less per process. Everything else (TTA, scales, CRF, float logits, CUDA) is
:class:`geoseg.engines.ort.OnnxEngine`, which takes the same sessions.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from geoseg.engines import EngineOutput
from geoseg.engines.graph import CLASSES, PROBABILITIES, VALID, fused_graph
from geoseg.classes import class_raster_dtype
from geoseg.memory import physical_memory
from geoseg.model_cache import cache_added, cache_hit
from geoseg.models.config import ModelConfig
from geoseg.models.ort_session import default_threads, make_session  # noqa: F401 (re-exported)
from geoseg.normalize import normalize

if TYPE_CHECKING:
    from geoseg.engines.ort import OnnxEngine
    from geoseg.models.onnx_summary import OnnxSummary
    from geoseg.options import InferenceOptions

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


def worker_task_threads() -> int:
    """Task threads of the Dask worker this runs in (1 outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return 1
    return int(getattr(getattr(worker, "state", worker), "nthreads", 1))


#: Overlapping runs (:func:`overlapping_runs`) only with at least this much memory per core:
#: each run in flight holds its own activations (a large network at large tiles: gigabytes).
OVERLAP_MEMORY_PER_CORE = 4 * 2**30


def overlapping_runs(cores: int, task_threads: int, memory: int) -> bool:
    """Whether the runs of a worker's tasks go through ONNX Runtime at once, one thread each,
    instead of one at a time on all ``cores``: where the worker has exactly as many task threads
    as it has cores (two on a 2-core machine; fewer cores would be oversubscribed) and the
    machine has ``memory`` bytes to spare for the second run's activations. A run on two threads
    waits at every layer for the thread that the reader or the writer took its core from; two
    single-thread runs do not. Predict at 8,192² (built-in model, 2 cores) took 31.9-34.1 s
    instead of 38.6-41.1 s, with 135 MB more peak memory (505 against 370 MB)."""
    return task_threads >= 2 and cores == task_threads and memory >= OVERLAP_MEMORY_PER_CORE * cores


#: Tiles of more pixels than this run one at a time on all of a worker's cores even where runs of
#: smaller tiles overlap (:func:`overlapping_runs`): each run in flight holds its own arena (a
#: deep network's at a 1,952² tile: over a gigabyte), and a scene of few large tiles has too few
#: tasks to keep one single-thread run per core busy (3 tasks over 2 threads: a core idle for a
#: third of the time).
OVERLAP_MAX_TILE_PIXELS = 1024 * 1024


class NoLock:
    """The engine lock where runs may overlap (:func:`overlapping_runs`): holds nothing."""

    def __enter__(self) -> "NoLock":
        return self

    def __exit__(self, *exc: object) -> None:
        return None




class FusedSessions:
    """The sessions of a model's fused graph (:func:`geoseg.engines.graph.fused_graph`): with
    probabilities or without (a run uses one of the two), each built on first use.

    With ``cache_key`` (the model's content hash) a fused graph is written once into the
    per-user model cache and later sessions load that file: building it needs the ``onnx``
    package, whose import alone took 0.45 s of every run."""

    def __init__(self, model: str | Path | bytes, config: ModelConfig, device: Any, threads: int | None,
                 proto: Any = None, summary: "OnnxSummary | None" = None, cache_key: str | None = None) -> None:
        self.model, self.config, self.device, self.threads = model, config, device, threads
        self._proto = proto
        self._summary = summary
        self.cache_key = cache_key if not isinstance(model, bytes) else None
        self._sessions: dict[bool, Any] = {}

    def proto(self) -> Any:
        """The network's ONNX graph (parsed from the model once, if not given)."""
        if self._proto is None:
            import onnx

            self._proto = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                           else onnx.load(str(self.model)))
        return self._proto

    def summary(self) -> "OnnxSummary":
        """Opset, inputs and outputs of the network's graph, read without the ``onnx`` package."""
        if self._summary is None:
            from geoseg.models.onnx_summary import read_summary, summarize

            self._summary = summarize(self.model) if isinstance(self.model, bytes) else read_summary(self.model)
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
                    session = make_session(self._fused_model(probabilities, cached), self.device, self.threads)
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


def fused_cache_path(cache_key: str, values: Sequence[int], dtype: Any, nodata: int, probabilities: bool) -> Path:
    """Where the fused graph of the model with content hash ``cache_key`` is kept for these
    class values and outputs, by this geoseg release and fused-graph format."""
    import hashlib
    import json

    from geoseg.version import __version__
    from geoseg.engines.graph import FUSED_FORMAT
    from geoseg.models.onnx_file import cache_dir

    variant = json.dumps([FUSED_FORMAT, __version__, list(values), str(np.dtype(dtype)), int(nodata), probabilities])
    return cache_dir() / f"{cache_key}-fused-{hashlib.sha256(variant.encode()).hexdigest()[:16]}.onnx"


class CpuEngine:
    """Plain inference under ONNX Runtime on the CPU: raw tiles in, class values (and uint8
    probabilities) out, in numpy and the fused graph only. A batch runs in :func:`cpu_runs`.

    Float logits (tests) and any batch the fused graph cannot take go to
    :class:`geoseg.engines.ort.OnnxEngine`, built (with torch) on first need.
    """

    name = "onnx"
    #: Whether the worker must set torch's threads for this engine: no torch here.
    uses_torch = False

    def __init__(self, model: str | Path | bytes, config: ModelConfig, options: "InferenceOptions",
                 threads: int | None = None, proto: Any = None, summary: "OnnxSummary | None" = None,
                 cache_key: str | None = None) -> None:
        #: One batch at a time on all cores, or (:func:`overlapping_runs`) each task's runs at
        #: once on one thread each; the worker holds it around :meth:`run`.
        self.lock: threading.Lock | NoLock = threading.Lock()
        #: Where runs overlap: the sessions and the lock of tiles too large to overlap
        #: (:data:`OVERLAP_MAX_TILE_PIXELS`), which run one at a time on all cores.
        self.large: tuple[FusedSessions, threading.Lock] | None = None
        if overlapping_runs(threads or default_threads(), worker_task_threads(), physical_memory()):
            self.large = (FusedSessions(model, config, "cpu", threads, proto, summary, cache_key), threading.Lock())
            threads, self.lock = 1, NoLock()
        self.model, self.config, self.options, self.threads = model, config, options, threads
        self.sessions = FusedSessions(model, config, "cpu", threads, proto, summary, cache_key)
        self._full: OnnxEngine | None = None

    def fused_available(self) -> bool:
        """Whether the fused graph can run this model (opset 13 or later)."""
        return self.sessions.fused_available()

    def full(self) -> "OnnxEngine":
        """The torch-backed ONNX engine for what this one does not do."""
        if self._full is None:
            import torch

            from geoseg.engines.ort import OnnxEngine

            self._full = OnnxEngine(self.model, self.config, torch.device("cpu"), self.options, self.threads,
                                    summary=self.sessions.summary(), cache_key=self.sessions.cache_key)
        return self._full

    def run(
        self, raw: np.ndarray, valid: np.ndarray, probabilities: bool = False, keep_logits: bool = False,
    ) -> EngineOutput:
        """Classes (and uint8 probabilities) for raw N x C x H x W tiles in the scene's dtype, with
        ``valid`` (N x H x W, bool) saying which pixels hold data."""
        if self.large is not None and raw.shape[2] * raw.shape[3] > OVERLAP_MAX_TILE_PIXELS \
                and not keep_logits and self.options.plain:
            sessions, lock = self.large
            with lock:
                session = sessions.get(probabilities)
                if session is not None:
                    return run_fused(sessions, session, raw, valid, probabilities, self.config)
        session = None if keep_logits or not self.options.plain else self.sessions.get(probabilities)
        if session is None:
            return self.full().run(raw, valid, probabilities, keep_logits)
        return run_fused(self.sessions, session, raw, valid, probabilities, self.config)


def run_fused(sessions: FusedSessions, session: Any, raw: np.ndarray, valid: np.ndarray,
              probabilities: bool, config: ModelConfig) -> EngineOutput:
    """A fused session (one of ``sessions``) over raw tiles on the CPU, in :func:`cpu_runs`,
    each run normalized just before it goes in: one run's float32 copy is alive at a time, not
    the batch's (12 MB for four 512² tiles of 3 bands)."""
    names = [CLASSES, PROBABILITIES] if probabilities else [CLASSES]
    image = sessions.image_input
    mask = valid[:, None]
    runs = [session.run(names, {image: normalize(raw[r], valid[r], config.mean, config.std), VALID: mask[r]})
            for r in cpu_runs(raw.shape[0], *raw.shape[2:])]
    out = runs[0] if len(runs) == 1 else [np.concatenate(parts) for parts in zip(*runs)]
    return EngineOutput(classes=out[0][:, 0], probabilities=out[1] if probabilities else None)
