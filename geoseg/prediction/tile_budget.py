"""Predict's automatic tile: the tile that does the least work within a memory budget.

Margins make tiling exact, so a wide receptive field (a deep encoder U-Net: 288 px) makes small
tiles expensive: a 1,088² tile keeps a 512² core and computes 4.5 pixels per pixel kept. Larger
tiles cost less overlap and more memory. The engine's peak memory and time for one run are
measured at a few tile sizes once per model, engine and device (:mod:`geoseg.prediction.tile_costs`), kept
in the per-user model cache, and :func:`choose_tile` picks, among the tiles that cut the scene
into whole balanced tiles, the one of least work (tiles x measured time per tile) whose memory
fits the budget (:func:`default_budget`, or ``--memory-budget``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from geoseg.errors import GeosegError, GeosegWarning, OptionError
from geoseg.memory import format_size, memory_limit
from geoseg.tiling import TileGrid, round_up

if TYPE_CHECKING:
    from geoseg.models.config import LoadedModel
    from geoseg.options import InferenceOptions

from geoseg.prediction.tile_costs import (
    TileCost,
    TileCosts,
    cost_cache_path,
    ladder,
    load_costs,
    measure_costs,
    measure_tile,
    save_costs,
)

#: Tile side where a model measures its first cost (or its smallest valid tile, if larger).
LADDER_START = 256

#: Measured tiles: the first, and then about twice and four times its pixels. Memory of a

#: convolutional network grows linearly with the pixels and its time per pixel levels off, so

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

#: Below this many seconds a measuring run is repeated and the second one timed (the first


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


def plan_auto_tile(
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
    fallback: int | None = None,
) -> TileChoice:
    """The automatic tile for this scene, model and engine (see the module's docstring):
    costs measured on this machine once per model, engine and device, and kept. Where
    measuring fails for a reason other than the request (an engine that cannot start here),
    ``fallback`` with a warning (None: the error is raised)."""
    try:
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
        choice = choose_tile(
            height, width, margin, stride, costs, budget, tiles_per_run, high, given
        )
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
    except GeosegError:
        raise
    except Exception as exc:  # noqa: BLE001 - measuring is an optimisation: plan as before
        if fallback is None:
            raise
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
