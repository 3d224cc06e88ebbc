"""Exact covered fractions by area accumulation against exactextract's coverage."""

from __future__ import annotations

import numpy as np
import shapely

from geoseg.results.coverage import coverage_grid, pieces, polygon_edges


def test_coverage_equals_exactextract_for_overlapping_polygons_with_holes(
    rng: np.random.Generator,
) -> None:
    """Random blobs partly off the grid, one with a hole, and a box cut through pixels: every
    pixel's fraction equals exactextract's (float32, so 1e-6) and each polygon's area inside
    the grid is the sum of its fractions."""
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    h, w = 37, 53
    geoms = []
    for i in range(6):
        c = shapely.Point(rng.uniform(-5, w + 5), rng.uniform(-5, h + 5))
        g = c.buffer(rng.uniform(3, 20), quad_segs=int(rng.integers(2, 9)))
        geoms.append(g.difference(c.buffer(2)) if i == 1 else g)
    geoms.append(shapely.box(3.3, 4.5, 20.25, 17))
    grid = coverage_grid(polygon_edges(np.array(geoms, dtype=object), np.arange(7)), 7, h, w)
    # exactextract's world has y up: row r is y in [h - r - 1, h - r]
    flipped = [
        shapely.transform(g, lambda xy: np.column_stack([xy[:, 0], h - xy[:, 1]])) for g in geoms
    ]
    feats = [
        {"type": "Feature", "properties": {"i": i}, "geometry": shapely.geometry.mapping(g)}
        for i, g in enumerate(flipped)
    ]
    src = NumPyRasterSource(np.zeros((h, w)), 0, 0, w, h)
    for f in exact_extract(src, feats, ["cell_id", "coverage"], include_cols=["i"]):
        expect = np.zeros(h * w)
        expect[np.asarray(f["properties"]["cell_id"])] = f["properties"]["coverage"]
        assert np.abs(grid[f["properties"]["i"]].ravel() - expect).max() < 1e-6
    for i, g in enumerate(geoms):
        inside = shapely.intersection(g, shapely.box(0, 0, w, h)).area
        assert abs(grid[i].sum() - inside) < 1e-9 * max(inside, 1)


def test_pieces_right_of_the_grid_are_left_out_and_left_of_it_gathered() -> None:
    # a box from x = -3.5 to x = 60 (the grid is 10 wide), rows 1 to 3
    edges = polygon_edges(np.array([shapely.box(-3.5, 1, 60, 3)], dtype=object), np.zeros(1))
    p = pieces(edges, 5, 10)
    assert sorted(zip(p.row.tolist(), p.col.tolist())) == [(1, -1), (2, -1)]
    grid = coverage_grid(edges, 1, 5, 10)
    assert grid[0].tolist() == [[0.0] * 10, [1.0] * 10, [1.0] * 10, [0.0] * 10, [0.0] * 10]


def test_a_border_two_zones_share_is_kept_once_with_its_neighbour() -> None:
    from geoseg.results.coverage import shared_edges

    # two boxes sharing the border x = 4 (from y = 1 to 3), a third apart
    geoms = [shapely.box(1, 1, 4, 3), shapely.box(4, 1, 7, 3), shapely.box(1, 5, 3, 6)]
    edges = polygon_edges(np.array(geoms, dtype=object), np.arange(3))
    keep, other = shared_edges(edges)
    assert (~keep).sum() == 1 and (other >= 0).sum() == 1
    (i,) = np.flatnonzero(other >= 0)
    assert edges.x0[i] == edges.x1[i] == 4
    assert {int(edges.zone[i]), int(other[i])} == {0, 1}
    # the neighbour's coverage from the kept edge, negated, equals its own
    whole = coverage_grid(edges, 3, 8, 8)
    kept = edges.take(keep)
    mine = coverage_grid(kept, 3, 8, 8)
    j = int(other[i])
    border = coverage_grid(edges.take(np.array([i])), 3, 8, 8)[int(edges.zone[i])]
    mine[j] -= border
    assert np.abs(mine - whole).max() < 1e-12
