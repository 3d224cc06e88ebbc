"""Predict's automatic tile: the tile that does the least work within a memory budget.

Margins make tiling exact, so a wide receptive field (a deep encoder U-Net: 288 px) makes small
tiles expensive: a 1,088² tile keeps a 512² core and computes 4.5 pixels per pixel kept. Larger
tiles cost less overlap and more memory. The engine's peak memory and time for one run are
measured at a few tile sizes once per model, engine and device (:func:`measure_costs`), kept
in the per-user model cache, and :func:`choose_tile` picks, among the tiles that cut the scene
into whole balanced tiles, the one of least work (tiles x measured time per tile) whose memory
fits the budget (:func:`default_budget`, or ``--memory-budget``).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from geoseg.errors import GeosegError, GeosegWarning, OptionError
from geoseg.memory import format_size, memory_limit, trim_heap
from geoseg.tiling import TileGrid, round_up

if TYPE_CHECKING:
    from geoseg.models.config import LoadedModel
    from geoseg.options import InferenceOptions

#: Tile side where a model measures its first cost (or its smallest valid tile, if larger).
LADDER_START = 256
#: Measured tiles: the first, and then about twice and four times its pixels. Memory of a
#: convolutional network grows linearly with the pixels and its time per pixel levels off, so
#: larger tiles are extrapolated from these (and on a GPU measured before they are used).
LADDER_STEPS = (1.0, math.sqrt(2), 2.0)
#: Largest automatic tile on the CPU: beyond it the overlap saved is a few per cent, while a
#: scene of few tiles keeps the reader, the engine and the writer from working at once.
CPU_MAX_TILE = 2048
#: Default budget on the CPU: this share of the worker's memory limit per task thread (the
#: reader's tiles, the writer's blocks and GDAL's cache need the rest).
MEMORY_SHARE = 0.25
#: Default budget on CUDA: this share of the GPU's free memory once the model is loaded.
GPU_MEMORY_SHARE = 0.8
#: Tiles whose work is within this fraction of the least are as good: the one needing the least
#: memory of them is chosen (one measuring run per size is not more precise than that).
WORK_TIE = 0.05
#: Layout of the cached costs; a new one measures again.
COST_FORMAT = 1
#: Below this many seconds a measuring run is repeated and the second one timed (the first
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


@dataclass(frozen=True)
class TileChoice:
    """The automatic tile and why: its overlap factor, its run's memory and the budget."""

    tile: int
    overlap_factor: float
    need_bytes: int
    budget_bytes: int
    #: False: the budget is the default (:func:`default_budget`).
    budget_given: bool = False
    #: Set where the tile was chosen without measuring: why.
    unmeasured: str = ""

    def describe(self) -> str:
        """For the run's first line."""
        if self.unmeasured:
            return f"automatic tile: {self.unmeasured}"
        return (
            f"automatic tile: {format_size(self.need_bytes)} per run within a "
            f"{'' if self.budget_given else 'default '}memory budget of {format_size(self.budget_bytes)}"
        )


def candidate_tiles(height: int, width: int, margin: int, stride: int, max_tile: int) -> list[int]:
    """Tile sizes on the stride lattice that cut the scene into whole balanced tiles along one
    axis (``TileGrid`` balances the other), smallest first, at most ``max_tile`` (and at
    least the smallest valid tile)."""
    found = set()
    for length in (height, width):
        for k in range(1, -(-length // stride) + 1):
            t = round_up(-(-length // k), stride) + 2 * margin
            if t <= max_tile:
                found.add(t)
            if t == 2 * margin + stride:
                break
    return sorted(found) or [2 * margin + stride]


def choose_tile(
    height: int,
    width: int,
    margin: int,
    stride: int,
    costs: TileCosts,
    budget: int,
    tiles_per_run: Callable[[int], int] = lambda px: 1,
    max_tile: int | None = None,
    budget_given: bool = True,
) -> TileChoice:
    """The tile of least work (number of tiles x measured time per tile) whose run needs at
    most ``budget`` bytes; of tiles within :data:`WORK_TIE` of the least work, the smallest.

    ``tiles_per_run(pixels)``: tiles of that many pixels the engine runs at once. Raises
    :class:`OptionError` naming the smallest budget that works when not even the smallest tile
    fits."""
    limit = max_tile or round_up(max(height, width), stride) + 2 * margin
    if costs.too_big is not None:
        limit = min(limit, costs.too_big - stride)
    rows: list[tuple[float, float, int, TileGrid]] = []
    smallest: tuple[float, int] | None = None
    for t in candidate_tiles(height, width, margin, stride, max(limit, 2 * margin + stride)):
        grid = TileGrid.create(height, width, t, margin, stride)
        px = grid.tile_height * grid.tile_width
        need = costs.need(px * tiles_per_run(px))
        if smallest is None or need < smallest[0]:
            smallest = (need, t)
        if need <= budget:
            rows.append((len(grid) * costs.seconds_per_tile(px), need, t, grid))
    if not rows:
        assert smallest is not None
        which = "--memory-budget" if budget_given else "the default memory budget"
        raise OptionError(
            f"{which} {format_size(budget)} is below what the smallest tile ({smallest[1]} px with margin "
            f"{margin}) needs, {format_size(smallest[0])}; give --memory-budget {size_argument(smallest[0])} or more"
        )
    least = min(r[0] for r in rows)
    work, need, tile, grid = min(
        (r for r in rows if r[0] <= least * (1 + WORK_TIE)), key=lambda r: (r[1], r[2])
    )
    return TileChoice(tile, grid.overlap_factor, int(need), int(budget), budget_given)


def size_argument(n: float) -> str:
    """``n`` bytes rounded up to a whole number of megabytes, as ``--memory-budget`` takes it."""
    return f"{math.ceil(n / 1e6)}MB"


def default_budget(device: str, task_threads: int | None = None) -> int:
    """The memory one run may use by default: :data:`MEMORY_SHARE` of this machine's (or
    container's) memory per worker task thread on the CPU; :data:`GPU_MEMORY_SHARE` of the
    GPU's free memory on CUDA (call it with the model loaded)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * GPU_MEMORY_SHARE)
    if task_threads is None:
        from geoseg.dask.session import INFERENCE_THREADS

        task_threads = INFERENCE_THREADS
    return int(memory_limit() * MEMORY_SHARE / max(1, task_threads))


# --- measuring -----------------------------------------------------------------------------


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


def auto_tile_within_budget(
    model: "LoadedModel",
    height: int,
    width: int,
    channels: int,
    dtype: Any,
    margin: int,
    stride: int,
    options: "InferenceOptions",
    engine: str = "auto",
    device: str = "auto",
    batch_size: int = 4,
    budget: int | None = None,
) -> TileChoice:
    """The automatic tile for this scene, model and engine (see the module's docstring):
    costs measured on this machine once per model, engine and device, and kept."""
    from geoseg.engines import device_name, resolve_engine
    from geoseg.engines.fused import CPU_RUN_PIXELS

    dev = device_name(device)
    cuda = dev.startswith("cuda")
    one = TileGrid.create(
        height, width, round_up(max(height, width), stride) + 2 * margin, margin, stride
    )
    if budget is None and max(one.tile_height, one.tile_width) <= 512:
        # the whole scene in one tile no larger than geoseg's long-standing default: least work
        return TileChoice(
            max(one.tile_height, one.tile_width),
            one.overlap_factor,
            0,
            0,
            unmeasured="the whole scene in one tile",
        )
    name = resolve_engine(engine, model.format, dev.split(":")[0], options)
    device_key = dev
    if cuda:
        import torch

        device_key = f"{dev} {torch.cuda.get_device_name(torch.device(dev))}"
    cpu_batches = name == "onnx" and not cuda

    def tiles_per_run(pixels: int) -> int:
        if cpu_batches:
            return max(1, min(batch_size, CPU_RUN_PIXELS // max(1, pixels)))
        return batch_size if cuda else 1

    path = cost_cache_path(model.sha256, name, device_key, options)
    costs = load_costs(path)
    built: list[bool] = []

    def build() -> Any:
        from geoseg.prediction.worker_models import (
            _build_engine,  # the worker's own engine, with its settings
        )

        return _build_engine(model.path, model.sha256, dev, name, options, None)

    def warm() -> None:
        if not built:  # a .pt model's ONNX conversion (once per hash) is not a tile's cost
            build()
            built.append(True)

    def measured_tiles(tile: int) -> int:
        """Tiles in a measuring run: as the CPU engine batches them; one on a GPU (a batch's
        memory is extrapolated, and a GPU worker halves its batch where it runs out)."""
        return tiles_per_run(tile * tile) if cpu_batches else 1

    def measure(tile: int) -> TileCost | None:
        warm()
        return measure_tile(build, tile, measured_tiles(tile), channels, dtype, dev)

    def run_pixels(tile: int) -> int:
        return tile * tile * measured_tiles(tile)

    given = budget is not None
    if budget is None:
        if cuda:
            warm()
        budget = default_budget(dev)
    high = round_up(max(height, width), stride) + 2 * margin
    if not cuda:
        high = min(high, max(CPU_MAX_TILE, 2 * margin + stride))
    low = min(high, max(2 * margin + stride, round_up(LADDER_START, stride)))
    changed = measure_costs(costs, ladder(low, high, stride), budget, measure, run_pixels)
    choice = choose_tile(height, width, margin, stride, costs, budget, tiles_per_run, high, given)
    # on a GPU a tile is measured before it is used (never out of memory there); on the CPU
    # memory extrapolates safely
    for _ in range(4):
        if costs.measured(choice.tile) or not cuda:
            break
        changed = measure_costs(costs, [choice.tile], budget, measure, run_pixels) or changed
        choice = choose_tile(
            height, width, margin, stride, costs, budget, tiles_per_run, high, given
        )
    if changed:
        save_costs(path, costs)
    return choice


def plan_auto_tile(
    model: "LoadedModel",
    height: int,
    width: int,
    channels: int,
    dtype: Any,
    margin: int,
    stride: int,
    options: "InferenceOptions",
    engine: str,
    device: str,
    batch_size: int,
    budget: int | None,
    fallback: int,
) -> TileChoice:
    """:func:`auto_tile_within_budget`, or ``fallback`` (with a warning) where measuring fails
    for a reason other than the request (an engine that cannot start here)."""
    try:
        return auto_tile_within_budget(
            model,
            height,
            width,
            channels,
            dtype,
            margin,
            stride,
            options,
            engine,
            device,
            batch_size,
            budget,
        )
    except GeosegError:
        raise
    except Exception as exc:  # noqa: BLE001 - measuring is an optimisation: plan as before
        warnings.warn(
            f"could not measure {model.name}'s memory per tile ({exc.__class__.__name__}: {exc}); "
            f"using --tile {fallback}",
            GeosegWarning,
            stacklevel=3,
        )
        grid = TileGrid.create(height, width, fallback, margin, stride)
        return TileChoice(
            fallback,
            grid.overlap_factor,
            0,
            budget or 0,
            budget is not None,
            unmeasured="memory not measured",
        )
