"""Exact covered fractions by area accumulation against exactextract's coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

from geoseg.results.coverage import coverage_grid, polygon_edges


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


def test_polygons_across_the_grid_s_sides_cover_each_pixel_by_its_intersection(
    rng: np.random.Generator,
) -> None:
    """Shallow and steep polygons reaching past the left and right sides of the grid (pieces
    left of it gathered, those right of it dropped, a row part from the last column onwards
    cut at the grid's edge): each pixel's fraction equals shapely's area of the polygon in it."""
    h, w = 9, 11
    geoms = [
        shapely.box(-3.5, 1, 60, 3),  # whole rows
        shapely.Polygon([(-7.3, 0.2), (18.9, 2.6), (14.1, 8.7), (-2.2, 6.1)]),
        shapely.Polygon([(9.6, -1), (40, 4.4), (10.3, 8.2)]),  # from the last column rightwards
    ]
    for _ in range(5):
        c = shapely.Point(rng.uniform(-4, w + 4), rng.uniform(-2, h + 2))
        geoms.append(shapely.affinity.scale(c.buffer(rng.uniform(2, 9), 3), 3.0, 0.4))
    grid = coverage_grid(
        polygon_edges(np.array(geoms, dtype=object), np.arange(len(geoms))), len(geoms), h, w
    )
    cells = np.array([[shapely.box(c, r, c + 1, r + 1) for c in range(w)] for r in range(h)])
    for i, g in enumerate(geoms):
        expect = shapely.area(shapely.intersection(cells, g))
        assert np.abs(grid[i] - expect).max() < 1e-9, i
    assert grid[0].tolist() == [[0.0] * w] + [[1.0] * w] * 2 + [[0.0] * w] * (h - 3)


def test_the_kernel_refuses_what_it_cannot_count() -> None:
    """Wrong types, lengths, zones and coordinates are errors, not memory read out of bounds."""
    import pytest

    from geoseg.results._zonal import count_strip

    data, lut = np.zeros((2, 3), np.uint8), np.zeros(256, np.uint16)
    xy, zone = np.array([0.5]), np.zeros(1, np.int64)

    def call(**change: object) -> None:
        args = dict(
            data=data,
            valid=None,
            lut=lut,
            h=2,
            w=3,
            slots=1,
            x0=xy,
            y0=np.array([0.0]),
            x1=xy,
            y1=np.array([2.0]),
            zone=zone,
            other=zone,
            zones=1,
            areas=None,
            pix=np.zeros((1, 1)),
            area=None,
            tot_pix=None,
            tot_area=None,
        )
        args.update(change)
        count_strip(*args.values())

    call()  # a valid call
    for bad, error in [
        (dict(zone=np.array([1])), ValueError),  # no such zone
        (dict(other=np.array([-1])), ValueError),
        (dict(x0=np.array([np.nan])), ValueError),
        (dict(y1=np.array([1e300])), ValueError),
        (dict(h=3), ValueError),  # more rows than the data holds
        (dict(data=data.astype(np.float32)), TypeError),
        (dict(lut=np.full(256, 7, np.uint16)), ValueError),  # slots beyond those counted
        (dict(pix=np.zeros(1, np.float32)), TypeError),
        (dict(y0=np.zeros(2)), ValueError),  # lengths differ
    ]:
        with pytest.raises(error):
            call(**bad)


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


def test_the_kernel_compiles_without_warnings(tmp_path: Path) -> None:
    """geoseg/results/_zonal.c, the project's one C file, stays clean under -Wall -Wextra
    -Wpedantic (ruff and mypy do not read it)."""
    import shutil
    import subprocess
    import sysconfig

    import pytest

    cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    source = Path(__file__).resolve().parents[1] / "geoseg" / "results" / "_zonal.c"
    res = subprocess.run(
        [
            cc,
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-fsyntax-only",
            f"-I{sysconfig.get_paths()['include']}",
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
