"""Exact fractions of pixels covered by polygons, by area accumulation, vectorized in numpy.

Each polygon edge is cut at the pixel grid lines; a piece inside pixel (r, c) that descends by
``dy`` adds ``dy`` times the part of the pixel's width to its right to pixel (r, c) and the rest
to (r, c + 1); summed along a row these give, in every pixel, the exact area of the polygon
inside it (the accumulation scan conversion of font rasterizers). Only pixels an edge touches
get a fraction; between them a row's coverage stays the same, so a polygon comes out as a
few *edge cells* with fractions and *runs* of pixels it covers alike (entirely, but for edges
lying exactly along a row). The cost follows the
polygons' perimeters in pixels, not their areas (exactextract's per-feature coverage grid and
per-cell operations cost about 60 ns per covered pixel; see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Sums this close to a whole number are that number (rounding of a sum that is exactly 0 or 1).
SNAP = 1e-9


@dataclass
class Coverage:
    """Pixels of a ``height`` x ``width`` grid covered by numbered polygons: edge cells with their
    covered fraction, and runs ``[start, stop)`` of a row with one fraction for all their pixels
    (1 inside a polygon; less where an edge runs exactly along the row, as a box's top does)."""

    cell_zone: np.ndarray
    cell_row: np.ndarray
    cell_col: np.ndarray
    cell_fraction: np.ndarray
    run_zone: np.ndarray
    run_row: np.ndarray
    run_start: np.ndarray
    run_stop: np.ndarray
    run_fraction: np.ndarray


def _polygons(geoms: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polygons of each geometry (multi-parts and collections opened, lines and points
    dropped) and the zone of each."""
    import shapely

    while True:
        kinds = shapely.get_type_id(geoms)
        multi = kinds >= 4  # MultiPoint, MultiLineString, MultiPolygon, GeometryCollection
        if not multi.any():
            break
        parts, index = shapely.get_parts(geoms, return_index=True)
        geoms, zones = parts, zones[index]
    keep = (kinds == 3) & ~shapely.is_empty(geoms)
    return geoms[keep], zones[keep]


def _edges(geoms: np.ndarray, zones: np.ndarray, col_off: float, row_off: float,
           flip_y: bool) -> tuple[np.ndarray, ...]:
    """Every ring edge ``(x0, y0, x1, y1, zone)`` in the grid's coordinates (x = column, y = row,
    from the grid's corner), rings oriented so that covered area counts positive."""
    import shapely

    polys, pzone = _polygons(geoms, zones)
    # exteriors counter-clockwise in y-up coordinates: clockwise once y points down (see module doc)
    polys = shapely.orient_polygons(polys, exterior_cw=not flip_y)
    rings, rpoly = shapely.get_rings(polys, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    x = xy[:, 0] - col_off
    y = (-xy[:, 1] if flip_y else xy[:, 1]) - row_off
    same = ring[1:] == ring[:-1]
    zone = pzone[rpoly[ring[:-1][same]]]
    return x[:-1][same], y[:-1][same], x[1:][same], y[1:][same], zone


def _crossings(a0: np.ndarray, a1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole numbers strictly between ``a0[i]`` and ``a1[i]``: ``(edge index, value, t)``
    with ``t`` the fraction of the edge where it crosses them."""
    lo = np.floor(np.minimum(a0, a1)) + 1
    hi = np.ceil(np.maximum(a0, a1)) - 1
    count = np.maximum(hi - lo + 1, 0).astype(np.int64)
    edge = np.repeat(np.arange(len(a0)), count)
    first = np.cumsum(count) - count
    k = lo[edge] + (np.arange(len(edge)) - np.repeat(first, count))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (k - a0[edge]) / (a1[edge] - a0[edge])
    return edge, k, t


def coverage(geoms: np.ndarray, zones: np.ndarray, height: int, width: int, col_off: float = 0.0,
             row_off: float = 0.0, flip_y: bool = False) -> Coverage:
    """Exact covered fractions of the pixels of a ``height`` x ``width`` grid by polygons
    ``geoms`` (shapely, in pixel units: x = column, y = row, or y = -row with ``flip_y``; the
    grid's corner at ``(col_off, row_off)``), numbered ``zones``; parts outside the grid are
    ignored. Polygons must be valid (shapely.make_valid); they may overlap each other.
    """
    x0, y0, x1, y1, ez = _edges(np.asarray(geoms, dtype=object), np.asarray(zones, dtype=np.int64),
                                col_off, row_off, flip_y)
    n = len(x0)
    # cut every edge where it crosses a grid line: points at t = 0, the crossings and t = 1
    ex, kx, tx = _crossings(x0, x1)
    ey, ky, ty = _crossings(y0, y1)
    ends = np.arange(n)
    edge = np.concatenate([ends, ex, ey, ends])
    t = np.concatenate([np.zeros(n), tx, ty, np.ones(n)])
    px = np.concatenate([x0, kx, x0[ey] + ty * (x1[ey] - x0[ey]), x1])
    py = np.concatenate([y0, y0[ex] + tx * (y1[ex] - y0[ex]), ky, y1])
    order = np.lexsort((t, edge))
    edge, px, py = edge[order], px[order], py[order]
    piece = edge[1:] == edge[:-1]
    xa, xb = px[:-1][piece], px[1:][piece]
    ya, yb = py[:-1][piece], py[1:][piece]
    zone = ez[edge[:-1][piece]]
    dy = yb - ya
    keep = dy != 0
    xa, xb, ya, yb, dy, zone = xa[keep], xb[keep], ya[keep], yb[keep], dy[keep], zone[keep]
    mx = (xa + xb) * 0.5
    col = np.floor(mx)
    row = np.floor((ya + yb) * 0.5).astype(np.int64)
    fx = mx - col
    col = col.astype(np.int64)
    # each piece: dy * (1 - fx) to its own pixel, dy * fx to the next one in the row
    c = np.concatenate([col, col + 1])
    r = np.concatenate([row, row])
    z = np.concatenate([zone, zone])
    v = np.concatenate([dy * (1.0 - fx), dy * fx])
    # pixels left of the grid gather what crosses into it from the left: one column, -1
    c = np.maximum(c, -1)
    inside = (r >= 0) & (r < height) & (c < width)
    c, r, z, v = c[inside], r[inside], z[inside], v[inside]
    zone_ids, zi = np.unique(z, return_inverse=True)
    span = width + 1
    key = (zi.astype(np.int64) * height + r) * span + (c + 1)
    order = np.argsort(key, kind="stable")
    key, v = key[order], v[order]
    first = np.empty(len(key), dtype=bool)
    first[:1] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    acc = np.add.reduceat(v, starts) if len(starts) else np.zeros(0)
    key = key[starts]
    group = key // span  # (zone, row)
    col = key % span - 1
    # cumulative sums within each (zone, row): the coverage of each edge cell
    total = np.cumsum(acc)
    new = np.empty(len(group), dtype=bool)
    new[:1] = True
    np.not_equal(group[1:], group[:-1], out=new[1:])
    base = (total - acc)[new]
    cover = total - np.repeat(base, np.diff(np.append(np.flatnonzero(new), len(group))))
    zone = zone_ids[group // height]
    row = group % height
    # runs: from after an edge cell to the next edge cell of the same (zone, row), or the row's end
    has_next = np.append(~new[1:], False)
    stop = np.where(has_next, np.append(col[1:], 0), width)
    start = col + 1
    # sums that should be whole numbers carry rounding errors of about 1e-15: snap them
    whole = np.rint(cover)
    cover = np.where(np.abs(cover - whole) < SNAP, whole, cover)
    run = (stop > start) & (cover != 0)
    cells = (col >= 0) & (cover != 0)
    out = Coverage(zone[cells], row[cells], col[cells], cover[cells],
                   zone[run], row[run], start[run], stop[run], cover[run])
    return out
