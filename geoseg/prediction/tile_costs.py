"""What a model costs per tile on one engine and device: its peak memory and time measured at a
few tile sizes (a fresh engine per size, random tiles), extrapolated between and beyond them, and
kept in the per-user model cache; :mod:`geoseg.prediction.tile_budget` chooses the tile from them."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from geoseg.memory import trim_heap
from geoseg.tiling import round_up

if TYPE_CHECKING:
    from geoseg.options import InferenceOptions

#: larger tiles are extrapolated from these (and on a GPU measured before they are used).
LADDER_STEPS = (1.0, math.sqrt(2), 2.0)

#: Layout of the cached costs; a new one measures again.
COST_FORMAT = 1

#: includes the session's start-up).
REPEAT_BELOW_S = 1.0


@dataclass(frozen=True)
class TileCost:
    """One measured run: ``tiles`` square tiles of ``tile`` px (as the engine batches them),
    its peak memory above the process's before the engine was built, and its time."""

    tile: int
    tiles: int
    peak_bytes: int
    seconds: float

    @property
    def run_pixels(self) -> int:
        return self.tile * self.tile * self.tiles


@dataclass
class TileCosts:
    """The measured costs of a model on one engine and device, and the smallest tile that did
    not fit (CUDA out of memory), if any."""

    costs: list[TileCost] = field(default_factory=list)
    too_big: int | None = None

    def add(self, cost: TileCost) -> None:
        self.costs = sorted(
            [c for c in self.costs if c.tile != cost.tile] + [cost], key=lambda c: c.tile
        )

    def measured(self, tile: int) -> bool:
        return any(c.tile == tile for c in self.costs)

    @property
    def largest(self) -> int:
        return max((c.tile for c in self.costs), default=0)

    def need(self, run_pixels: float) -> float:
        """Peak bytes of a run over ``run_pixels`` pixels: linear between measured runs, and
        beyond them along the nearest two (memory of a convolutional network grows linearly)."""
        points = sorted({c.run_pixels: c.peak_bytes for c in self.costs}.items())
        if not points:
            raise ValueError("no measured costs")
        if len(points) == 1:
            px, peak = points[0]
            return max(float(peak), peak * run_pixels / px)
        xs = [float(p) for p, _ in points]
        ys = [float(b) for _, b in points]
        i = (
            0
            if run_pixels <= xs[0]
            else len(xs) - 2
            if run_pixels >= xs[-1]
            else max(j for j in range(len(xs) - 1) if xs[j] <= run_pixels)
        )
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return max(ys[i] + slope * (run_pixels - xs[i]), min(ys) * 0.5)

    def seconds_per_tile(self, tile_pixels: float) -> float:
        """Time of one tile of ``tile_pixels``: linear between measured tiles; below the
        smallest and above the largest, that one's time per pixel."""
        points = sorted({c.tile * c.tile: c.seconds / c.tiles for c in self.costs}.items())
        xs = [float(p) for p, _ in points]
        ys = [float(s) for _, s in points]
        if tile_pixels <= xs[0]:
            return ys[0] * tile_pixels / xs[0]
        if tile_pixels >= xs[-1]:
            return ys[-1] * tile_pixels / xs[-1]
        return float(np.interp(tile_pixels, xs, ys))

    def to_json(self) -> dict[str, Any]:
        return {
            "costs": [[c.tile, c.tiles, c.peak_bytes, c.seconds] for c in self.costs],
            "too_big": self.too_big,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TileCosts":
        costs = [TileCost(int(t), int(n), int(p), float(s)) for t, n, p, s in data.get("costs", [])]
        too_big = data.get("too_big")
        return cls(sorted(costs, key=lambda c: c.tile), None if too_big is None else int(too_big))


def ladder(low: int, high: int, stride: int) -> list[int]:
    """Tile sizes to measure: ``low`` times :data:`LADDER_STEPS`, on the stride lattice, at most ``high``."""
    return sorted({min(high, round_up(int(low * step), stride)) for step in LADDER_STEPS})


def _rss() -> int:
    """This process's resident memory now (0 where /proc does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


try:
    import os as _os

    _PAGE = int(_os.sysconf("SC_PAGE_SIZE"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
    _PAGE = 4096


class PeakMemory:
    """The peak resident memory of this process inside a ``with`` block, above what it had at
    the start: the kernel's high-water mark where it can be reset (Linux), and samples every
    few milliseconds in any case."""

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm = False

    def __enter__(self) -> "PeakMemory":
        self.base = self.peak = _rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self._hwm = True
        except OSError:
            self._hwm = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss())
        if self._hwm:
            with contextlib.suppress(OSError, ValueError, StopIteration):
                text = Path("/proc/self/status").read_text()
                line = next(x for x in text.splitlines() if x.startswith("VmHWM:"))
                self.peak = max(self.peak, int(line.split()[1]) * 1024)

    @property
    def used(self) -> int:
        return max(0, self.peak - self.base)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (or the host) running out of memory."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate" in text


def measure_tile(
    build: Callable[[], Any], tile: int, tiles: int, channels: int, dtype: Any, device: str
) -> TileCost | None:
    """Build an engine with ``build`` and run it once on ``tiles`` random tiles of ``tile`` px;
    its time and the memory the engine and the run took (None: out of memory). A fresh engine
    per size: an engine's arena keeps what its largest run took."""
    gc.collect()
    trim_heap(0)
    dt = np.dtype(dtype)
    cuda = device.startswith("cuda")
    torch: Any = None
    if cuda:
        import torch

        dev = torch.device(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        allocated = torch.cuda.memory_allocated(dev)
        free_before = torch.cuda.mem_get_info(dev)[0]
    engine = None
    try:
        with PeakMemory() as host:
            rng = np.random.default_rng(0)
            if dt.kind == "f":
                raw = rng.random((tiles, channels, tile, tile), dtype=np.float32).astype(dt)
            else:
                raw = rng.integers(0, 200, (tiles, channels, tile, tile), dtype=np.uint8).astype(dt)
            valid = np.ones((tiles, tile, tile), dtype=bool)
            engine = build()
            start = time.perf_counter()
            engine.run(raw, valid)
            seconds = time.perf_counter() - start
            if seconds < REPEAT_BELOW_S:
                start = time.perf_counter()
                engine.run(raw, valid)
                seconds = time.perf_counter() - start
            if cuda:
                torch.cuda.synchronize(dev)
                device_peak = max(
                    torch.cuda.max_memory_allocated(dev) - allocated,
                    free_before - torch.cuda.mem_get_info(dev)[0],
                )
    except Exception as exc:  # noqa: BLE001 - out of memory means: too big; anything else is raised
        if not _out_of_memory(exc):
            raise
        return None
    finally:
        del engine
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    peak = device_peak if cuda else host.used
    return TileCost(tile, tiles, int(peak), seconds)


def cost_cache_path(sha256: str, engine: str, device: str, options: "InferenceOptions") -> Path:
    """Where the costs of the model with content hash ``sha256`` on this engine and device are kept."""
    from geoseg.model_cache import model_cache_dir
    from geoseg.version import __version__

    variant = json.dumps([COST_FORMAT, __version__, engine, device, repr(options)])
    return (
        model_cache_dir()
        / f"{sha256}-tiles-{hashlib.sha256(variant.encode()).hexdigest()[:16]}.json"
    )


def load_costs(path: Path) -> TileCosts:
    """The cached costs at ``path`` (none measured when missing or unreadable)."""
    from geoseg.model_cache import cache_hit

    if not cache_hit(path):
        return TileCosts()
    try:
        return TileCosts.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return TileCosts()


def save_costs(path: Path, costs: TileCosts) -> None:
    """Keep ``costs`` at ``path`` in the model cache."""
    from geoseg.fs import write_bytes_atomic
    from geoseg.model_cache import cache_added

    write_bytes_atomic(path, json.dumps(costs.to_json()).encode())
    cache_added(path)


def measure_costs(
    costs: TileCosts,
    sizes: Sequence[int],
    budget: int,
    measure: Callable[[int], TileCost | None],
    run_pixels: Callable[[int], int] = lambda tile: tile * tile,
) -> bool:
    """Measure the ``sizes`` (ascending) not measured yet into ``costs``, stopping after one
    that does not fit the budget (or the device), or before one whose memory, extrapolated
    from two measured, would not; returns whether anything was measured."""
    changed = False
    for size in sizes:
        if costs.too_big is not None and size >= costs.too_big:
            break
        if costs.measured(size):
            if next(c for c in costs.costs if c.tile == size).peak_bytes > budget:
                break
            continue
        if len(costs.costs) >= 2 and costs.need(run_pixels(size)) > 1.5 * budget:
            break
        cost = measure(size)
        changed = True
        if cost is None:
            costs.too_big = size if costs.too_big is None else min(costs.too_big, size)
            break
        costs.add(cost)
        if cost.peak_bytes > budget:
            break
    return changed
