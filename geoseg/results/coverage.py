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


def _edges(
    geoms: np.ndarray, zones: np.ndarray, col_off: float, row_off: float, flip_y: bool
) -> tuple[np.ndarray, ...]:
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


def _spans(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every whole number ``k`` in ``[lo[i], hi[i]]``: ``(i, k)``, in order of ``i`` then ``k``."""
    count = np.maximum(hi - lo + 1, 0).astype(np.int64)
    owner = np.repeat(np.arange(len(lo)), count)
    first = np.cumsum(count) - count
    return owner, lo[owner] + (np.arange(len(owner)) - first[owner])


def _sorted_order(key: np.ndarray, limit: int) -> np.ndarray:
    """The stable order of non-negative ``key`` (all below ``limit``): the indices packed into
    the keys' spare low bits and sorted as one int64 (numpy's vectorized sort, several times
    faster than an argsort of the same keys), or an argsort where the bits do not suffice."""
    n = len(key)
    index_bits = max(int(n - 1).bit_length(), 1)
    if max(int(limit - 1), 1).bit_length() + index_bits > 63:
        return np.argsort(key, kind="stable")
    packed = np.sort((key << index_bits) | np.arange(n, dtype=np.int64))
    return packed & ((1 << index_bits) - 1)


def coverage(
    geoms: np.ndarray,
    zones: np.ndarray,
    height: int,
    width: int,
    col_off: float = 0.0,
    row_off: float = 0.0,
    flip_y: bool = False,
) -> Coverage:
    """Exact covered fractions of the pixels of a ``height`` x ``width`` grid by polygons
    ``geoms`` (shapely, in pixel units: x = column, y = row, or y = -row with ``flip_y``; the
    grid's corner at ``(col_off, row_off)``), numbered ``zones``; parts outside the grid are
    ignored. Polygons must be valid (shapely.make_valid); they may overlap each other.

    Each edge is cut into its parts within each row of the grid, and each of those into its
    pieces within each column, directly from the whole numbers between their ends (no sorting
    along the edges); the pieces' contributions are then grouped by (zone, row, column) with
    one sort of packed integer keys.
    """
    x0, y0, x1, y1, ez = _edges(
        np.asarray(geoms, dtype=object), np.asarray(zones, dtype=np.int64), col_off, row_off, flip_y
    )
    slanted = y0 != y1  # a level edge adds no area
    x0, y0, x1, y1, ez = x0[slanted], y0[slanted], x1[slanted], y1[slanted], ez[slanted]
    zone_ids, ezi = np.unique(ez, return_inverse=True)
    # the edges' parts within each row of the grid (rows outside it dropped)
    ymin, ymax = np.minimum(y0, y1), np.maximum(y0, y1)
    edge, row = _spans(np.maximum(np.floor(ymin), 0), np.minimum(np.ceil(ymax) - 1, height - 1))
    slope = (x1 - x0) / (y1 - y0)
    ya = np.maximum(row, ymin[edge])
    yb = np.minimum(row + 1, ymax[edge])
    xa = x0[edge] + (ya - y0[edge]) * slope[edge]
    xb = x0[edge] + (yb - y0[edge]) * slope[edge]
    dy_row = np.where(y1[edge] > y0[edge], yb - ya, ya - yb)
    xlo, xhi = np.minimum(xa, xb), np.maximum(xa, xb)
    # each row part's pieces within each column; every piece left of the grid gathered into
    # column -1 (all that matters there is their sum), pieces right of it dropped
    clo = np.floor(xlo)
    chi = np.maximum(np.ceil(xhi) - 1, clo)
    part, col = _spans(np.maximum(clo, -1), np.maximum(np.minimum(chi, width - 1), -1))
    lo_p, hi_p = xlo[part], xhi[part]
    lower = np.where(col <= -1, lo_p, np.maximum(col, lo_p))
    upper = np.minimum(col + 1, hi_p)
    width_p = hi_p - lo_p
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(width_p > 0, (upper - lower) / width_p, 1.0)
    dy = dy_row[part] * share
    fx = np.clip((lower + upper) * 0.5 - col, 0.0, 1.0)
    row_p = row[part].astype(np.int64)
    col_p = col.astype(np.int64)
    zi = ezi[edge[part]].astype(np.int64)
    # each piece: dy * (1 - fx) to its own pixel, dy * fx to the next one in the row
    nxt = col_p + 1 < width
    c = np.concatenate([col_p, col_p[nxt] + 1])
    r = np.concatenate([row_p, row_p[nxt]])
    z = np.concatenate([zi, zi[nxt]])
    v = np.concatenate([dy * (1.0 - fx), (dy * fx)[nxt]])
    span = width + 1
    key = (z * height + r) * span + (c + 1)
    order = _sorted_order(key, max(len(zone_ids), 1) * height * span)
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
    out = Coverage(
        zone[cells],
        row[cells],
        col[cells],
        cover[cells],
        zone[run],
        row[run],
        start[run],
        stop[run],
        cover[run],
    )
    return out
