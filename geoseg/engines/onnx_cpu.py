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
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.engines import EngineOutput
from geoseg.engines.fused import CPU_RUN_PIXELS, FusedSessions, cpu_runs, run_fused  # noqa: F401 (CPU_RUN_PIXELS, cpu_runs: re-exported)
from geoseg.memory import physical_memory
from geoseg.models.config import ModelConfig
from geoseg.models.ort_session import default_threads, make_session  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from geoseg.engines.ort import OnnxEngine
    from geoseg.models.onnx_summary import OnnxSummary
    from geoseg.options import InferenceOptions


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


class CpuEngine:
    """Plain inference under ONNX Runtime on the CPU: raw tiles in, class values (and uint8
    probabilities) out, in numpy and the fused graph only. A batch runs in :func:`cpu_runs`.

    Float logits (tests) and any batch the fused graph cannot take go to
    :class:`geoseg.engines.ort.OnnxEngine`, built (with torch) on first need.
    """

    name = "onnx"
    #: Whether the worker must set torch's threads for this engine: no torch here.
    uses_torch = False

    def __init__(
        self,
        model: str | Path | bytes,
        config: ModelConfig,
        options: "InferenceOptions",
        threads: int | None = None,
        proto: Any = None,
        summary: "OnnxSummary | None" = None,
        cache_key: str | None = None,
    ) -> None:
        #: One batch at a time on all cores, or (:func:`overlapping_runs`) each task's runs at
        #: once on one thread each; the worker holds it around :meth:`run`.
        self.lock: threading.Lock | NoLock = threading.Lock()
        #: Where runs overlap: the sessions and the lock of tiles too large to overlap
        #: (:data:`OVERLAP_MAX_TILE_PIXELS`), which run one at a time on all cores.
        self.large: tuple[FusedSessions, threading.Lock] | None = None
        if overlapping_runs(threads or default_threads(), worker_task_threads(), physical_memory()):
            self.large = (
                FusedSessions(model, config, "cpu", threads, proto, summary, cache_key),
                threading.Lock(),
            )
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

            self._full = OnnxEngine(
                self.model,
                self.config,
                torch.device("cpu"),
                self.options,
                self.threads,
                summary=self.sessions.summary(),
                cache_key=self.sessions.cache_key,
            )
        return self._full

    def run(
        self,
        raw: np.ndarray,
        valid: np.ndarray,
        probabilities: bool = False,
        keep_logits: bool = False,
    ) -> EngineOutput:
        """Classes (and uint8 probabilities) for raw N x C x H x W tiles in the scene's dtype, with
        ``valid`` (N x H x W, bool) saying which pixels hold data."""
        if (
            self.large is not None
            and raw.shape[2] * raw.shape[3] > OVERLAP_MAX_TILE_PIXELS
            and not keep_logits
            and self.options.plain
        ):
            sessions, lock = self.large
            with lock:
                session = sessions.get(probabilities)
                if session is not None:
                    return run_fused(sessions, session, raw, valid, probabilities, self.config)
        session = (
            None if keep_logits or not self.options.plain else self.sessions.get(probabilities)
        )
        if session is None:
            return self.full().run(raw, valid, probabilities, keep_logits)
        return run_fused(self.sessions, session, raw, valid, probabilities, self.config)
