"""The automatic tile within a memory budget: the choice from measured costs, the error for a
budget too small, the cached costs, and the built-in model's classes unchanged by the tile."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import geoseg
from geoseg.cli.main import cli
from geoseg.errors import OptionError
from geoseg.memory import parse_size
from geoseg.options import PredictOptions
from geoseg.prediction.tile_budget import choose_tile
from geoseg.prediction.tile_costs import (
    TileCost,
    TileCosts,
    cost_cache_path,
    load_costs,
    measure_costs,
    save_costs,
)

#: A deep network's costs as a U-Net on ResNet-18 has them: 100 MB plus 500 bytes per pixel,
#: and 1 microsecond per pixel.
DEEP = TileCosts(
    [TileCost(t, 1, 100_000_000 + 500 * t * t, 1e-6 * t * t) for t in (608, 864, 1216)]
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model cache of the test's own (costs measured by one test are not another's)."""
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    return tmp_path


def test_the_largest_tile_within_the_budget_is_the_least_work() -> None:
    # 4,096² with a 288 px margin: 1,952² tiles (3 x 3, overlap 2.01) need 2.0 GB, 2,624²
    # (2 x 2, overlap 1.64) 3.5 GB
    choice = choose_tile(4096, 4096, 288, 32, DEEP, budget=3_000_000_000)
    assert choice.tile == 1952 and choice.overlap_factor == pytest.approx((1952 / 1376) ** 2)
    assert choice.need_bytes <= 3_000_000_000
    assert choose_tile(4096, 4096, 288, 32, DEEP, budget=4_000_000_000).tile == 2624
    # a smaller budget: more, smaller tiles
    assert choose_tile(4096, 4096, 288, 32, DEEP, budget=1_000_000_000).tile < 1952


def test_a_tile_that_does_not_fit_the_device_is_never_chosen() -> None:
    costs = TileCosts(list(DEEP.costs), too_big=2624)
    assert choose_tile(4096, 4096, 288, 32, costs, budget=10**12).tile == 1952


def test_per_pixel_cost_that_grows_with_the_tile_favours_smaller_tiles() -> None:
    # time per pixel three times as high at 1,216² as at 864²: 864² tiles (overlap 9) cost less
    # than 1,184² (overlap 3.8)
    per_pixel = {608: 1e-6, 864: 1e-6, 1216: 3e-6}
    slow = TileCosts([TileCost(t, 1, 10**8, s * t * t) for t, s in per_pixel.items()])
    assert choose_tile(4096, 4096, 288, 32, slow, budget=10**12, max_tile=1216).tile == 864
    assert choose_tile(4096, 4096, 288, 32, DEEP, budget=10**12, max_tile=1216).tile == 1184


def test_a_budget_below_the_smallest_tile_names_the_smallest_that_works() -> None:
    with pytest.raises(OptionError) as err:
        choose_tile(4096, 4096, 288, 32, DEEP, budget=50_000_000)
    text = str(err.value)
    assert "\n" not in text and "--memory-budget 50 MB" in text
    smallest = text.split("give --memory-budget ")[1].split()[0]
    choice = choose_tile(4096, 4096, 288, 32, DEEP, budget=parse_size(smallest))
    assert choice.tile == 2 * 288 + 32


def test_measuring_stops_at_the_first_size_over_the_budget_or_out_of_memory() -> None:
    measured: list[int] = []

    def measure(tile: int) -> TileCost | None:
        measured.append(tile)
        return None if tile >= 2000 else TileCost(tile, 1, 1000 * tile * tile, 0.1)

    costs = TileCosts()
    assert measure_costs(costs, [256, 512, 1024, 2048, 4096], budget=10**12, measure=measure)
    assert measured == [256, 512, 1024, 2048] and costs.too_big == 2048
    costs, measured[:] = TileCosts(), []
    measure_costs(costs, [256, 300, 4096], budget=100_000_000, measure=measure)
    assert measured == [256, 300]  # 4,096² extrapolates to 16.8 GB: not run at all


def test_costs_round_trip_through_the_model_cache(cache: Path) -> None:
    from geoseg.options import InferenceOptions

    path = cost_cache_path("ab" * 32, "onnx", "cpu", InferenceOptions())
    assert path.parent.parent == cache and load_costs(path).costs == []
    costs = TileCosts(list(DEEP.costs), too_big=3000)
    save_costs(path, costs)
    assert load_costs(path) == costs
    assert cost_cache_path("ab" * 32, "onnx", "cpu", InferenceOptions(tta="flip")) != path
    path.write_text("not json")
    assert load_costs(path).costs == []  # an unreadable entry is measured again


def test_memory_budget_option() -> None:
    assert PredictOptions(memory_budget="1500MB").memory_budget_bytes == 1_500_000_000
    assert PredictOptions(memory_budget="2GiB").memory_budget_bytes == 2 * 2**30
    assert PredictOptions().memory_budget_bytes is None
    with pytest.raises(OptionError, match="--memory-budget"):
        PredictOptions(memory_budget="2 lots")
    with pytest.raises(OptionError, match="drop it, or --tile"):
        PredictOptions(memory_budget="2GB", tile=512)


def test_builtin_model_classes_do_not_depend_on_the_automatic_tile(
    tmp_path: Path,
    cache: Path,
    scene_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=4, height=600, width=700, dtype="uint16")
    auto = geoseg.predict(
        str(scene), str(tmp_path / "auto.tif"), client=dask_client, memory_budget="1GB"
    )
    fixed = geoseg.predict(str(scene), str(tmp_path / "fixed.tif"), client=dask_client, tile=256)
    assert auto.tile != fixed.tile and list(cache.glob("geoseg-models-*/*-tiles-*.json"))
    with rasterio.open(auto.output) as a, rasterio.open(fixed.output) as b:
        assert int(np.count_nonzero(a.read() != b.read())) == 0
    # too small a budget: one line naming one that works, nothing written
    res = CliRunner().invoke(
        cli, ["predict", str(scene), "-o", str(tmp_path / "small.tif"), "--memory-budget", "1MB"]
    )
    assert (
        res.exit_code != 0
        and "give --memory-budget" in res.output
        and not (tmp_path / "small.tif").exists()
    )


def test_an_engine_that_cannot_be_measured_falls_back_with_a_warning(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measuring is an optimisation: where it fails for a reason other than the request, the
    plan goes on with the fallback tile and says so; without a fallback the error is raised."""
    from geoseg.errors import GeosegWarning
    from geoseg.models.load import load_model
    from geoseg.options import InferenceOptions
    from geoseg.prediction import tile_budget

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no such provider")

    monkeypatch.setattr("geoseg.engines.resolve_engine", broken)
    model = load_model(None)
    args = (model, 3000, 3000, 4, "uint16", 48, 16, InferenceOptions())
    with pytest.warns(GeosegWarning, match="could not measure .* using --tile 512"):
        choice = tile_budget.plan_auto_tile(*args, budget=2_000_000_000, fallback=512)
    assert choice.tile == 512 and choice.unmeasured == "memory not measured"
    with pytest.raises(RuntimeError, match="no such provider"):
        tile_budget.plan_auto_tile(*args, budget=2_000_000_000)
