"""Tile geometry: mirror indices, grid coverage, stride alignment, and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import TilingError
from geoseg.tiling import TileGrid, auto_margin, reflect_index, validate_tiling


@given(n=st.integers(1, 40), pad=st.integers(0, 120))
def test_reflect_index_matches_numpy_reflect_padding(n: int, pad: int) -> None:
    a = np.arange(n) * 3 + 1
    expected = np.pad(a, (pad, pad), mode="reflect")
    got = a[reflect_index(np.arange(-pad, n + pad), n)]
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    stride_exp=st.integers(0, 4),
    margin_mult=st.integers(0, 6),
    core_mult=st.integers(1, 12),
)
def test_cores_partition_the_scene_and_inputs_align_to_stride(
    height: int, width: int, stride_exp: int, margin_mult: int, core_mult: int
) -> None:
    stride = 2**stride_exp
    margin = margin_mult * stride
    tile = 2 * margin + max(core_mult * stride, 16)
    grid = TileGrid.create(height, width, tile, margin, stride)
    cover = np.zeros((height, width), dtype=np.int32)
    for t in grid:
        w = t.core
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
        assert (t.input_row + margin) % stride == 0 and (t.input_col + margin) % stride == 0
        assert t.input_height % stride == 0 and t.input_width % stride == 0
        r, c = t.core_offset
        assert r == margin and c == margin
        assert t.input_height <= tile and t.input_width <= tile
    assert (cover == 1).all()
    groups = grid.groups(3)
    assert sum(len(g) for g in groups) == len(grid)
    assert all(len({t.grid_row for t in g}) == 1 for g in groups)


def test_auto_margin_rounds_receptive_field_up_to_stride() -> None:
    assert auto_margin(46, 8) == 48
    assert auto_margin(48, 8) == 48
    assert auto_margin(0, 16) == 0


@pytest.mark.parametrize(
    ("tile", "margin", "stride", "suggestion"),
    [
        (100, 16, 8, "--tile 96"),
        (108, 16, 16, "--tile 112"),
        (64, 32, 8, "--tile 72"),
        (64, 12, 8, "--margin 16"),
    ],
)
def test_bad_tiling_names_the_nearest_valid_value(
    tile: int, margin: int, stride: int, suggestion: str
) -> None:
    with pytest.raises(TilingError, match=suggestion):
        validate_tiling(tile, margin, stride)


def test_overlap_factor_is_tile_over_core_squared() -> None:
    grid = TileGrid.create(4096, 4096, 512, 64, 16)
    assert grid.overlap_factor == pytest.approx((512 / 384) ** 2)
