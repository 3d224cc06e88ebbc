"""Exact fractions of pixels covered by polygons, by area accumulation, vectorized in numpy.

Each polygon edge is cut at the pixel grid lines into *pieces*; a piece inside pixel (r, c) that
descends by ``dy`` adds ``dy`` times the part of the pixel's width to its right to pixel (r, c)
and ``dy`` to every pixel after it in the row; summed over the pieces of a row these give, in
every pixel, the exact area of the polygon inside it (the accumulation scan conversion of font
rasterizers).
So a sum over the covered pixels weighted by their fractions is a sum over the pieces, each
weighted by what lies at and to the right of it in its row (:func:`pieces`): its cost follows
the polygons' perimeters in pixels, not their areas, and needs no sorting or grouping of the
pieces (exactextract's per-feature coverage grid and per-cell operations cost about 60 ns per
covered pixel; see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Edges:
    """Polygon edges ``(x0, y0) -> (x1, y1)`` (x = column, y = row, from the grid's corner),
    oriented so that covered area counts positive, level edges (which add no area) left out;
    ``zone``: each edge's polygon number."""

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    zone: np.ndarray

    def __len__(self) -> int:
        return len(self.zone)

    def take(self, index: np.ndarray | slice) -> Edges:
        """The edges at ``index`` (a mask, positions or a slice)."""
        return Edges(
            self.x0[index], self.y0[index], self.x1[index], self.y1[index], self.zone[index]
        )

    def shifted(self, col_off: float, row_off: float) -> Edges:
        """The same edges in a grid whose corner is at ``(col_off, row_off)``."""
        return Edges(
            self.x0 - col_off, self.y0 - row_off, self.x1 - col_off, self.y1 - row_off, self.zone
        )


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


def polygon_edges(geoms: np.ndarray, zones: np.ndarray) -> Edges:
    """Every ring edge of valid polygons ``geoms`` (shapely, in pixel units: x = column, y = row
    growing downwards; they may overlap each other), numbered ``zones``, as :class:`Edges` in the
    order of ``geoms``."""
    import shapely

    polys, pzone = _polygons(np.asarray(geoms, dtype=object), np.asarray(zones, dtype=np.int64))
    # with y pointing down, an exterior clockwise in these numbers is counter-clockwise on the map
    polys = shapely.orient_polygons(polys, exterior_cw=True)
    rings, rpoly = shapely.get_rings(polys, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    x, y = xy[:, 0], xy[:, 1]
    same = ring[1:] == ring[:-1]
    same &= y[1:] != y[:-1]  # a level edge adds no area
    zone = pzone[rpoly[ring[:-1][same]]]
    return Edges(x[:-1][same], y[:-1][same], x[1:][same], y[1:][same], zone)


def _spans(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every whole number ``k`` in ``[lo[i], hi[i]]``: ``(i, k)``, in order of ``i`` then ``k``."""
    count = np.maximum(hi - lo + 1, 0).astype(np.int64)
    owner = np.repeat(np.arange(len(lo)), count)
    first = np.cumsum(count) - count
    return owner, (lo.astype(np.int64) - first)[owner] + np.arange(len(owner))


@dataclass
class Pieces:
    """The pieces of edges within the pixels of a grid: for each, its edge (index into the
    :class:`Edges`), ``row``, ``col`` (-1: left of the grid, all pieces there of a row gathered
    as one), the height ``dy`` it descends (signed: covered area positive) and ``right``, the
    part of it lying in its own pixel's width to its right.

    The polygon of the pieces covers of pixel (r, c) the fraction: the sum of ``dy`` over the
    pieces of row r left of column c, plus ``right`` of those in column c. Pieces right of the
    grid are left out: they cover nothing in it.
    """

    edge: np.ndarray
    row: np.ndarray
    col: np.ndarray
    dy: np.ndarray
    right: np.ndarray


def pieces(edges: Edges, height: int, width: int) -> Pieces:
    """The :class:`Pieces` of ``edges`` in a ``height`` x ``width`` grid (corner at 0, 0).

    Each edge is cut into its parts within each row of the grid, and each of those into its
    pieces within each column, directly from the whole numbers between their ends.
    """
    x0, y0, x1, y1 = edges.x0, edges.y0, edges.x1, edges.y1
    # the edges' parts within each row of the grid (rows outside it dropped)
    ymin, ymax = np.minimum(y0, y1), np.maximum(y0, y1)
    edge, row = _spans(np.maximum(np.floor(ymin), 0), np.minimum(np.ceil(ymax) - 1, height - 1))
    slope = (x1 - x0) / (y1 - y0)
    ex0, ey0, es = x0[edge], y0[edge], slope[edge]
    ya = np.maximum(row, ymin[edge])
    yb = np.minimum(row + 1, ymax[edge])
    xa = ex0 + (ya - ey0) * es
    xb = ex0 + (yb - ey0) * es
    dy_row = yb - ya
    down = (y1 > y0)[edge]
    np.negative(dy_row, out=dy_row, where=~down)
    xlo, xhi = np.minimum(xa, xb), np.maximum(xa, xb)
    # each row part's pieces within each column; every piece left of the grid gathered into
    # column -1 (all that matters there is their sum), pieces right of it dropped
    clo = np.maximum(np.floor(xlo), -1)
    chi = np.maximum(np.minimum(np.ceil(xhi) - 1, width - 1), clo)
    one = (clo == chi) | (clo >= width)  # most parts lie within one column: no spans for those
    if one.all():
        part, col = np.arange(len(clo)), clo.astype(np.int64)
    else:
        chi = np.where(clo >= width, clo - 1, chi)  # right of the grid: no piece
        part, col = _spans(clo, chi)
    lo_p, hi_p, dy_p = xlo[part], xhi[part], dy_row[part]
    colf = col.astype(np.float64)
    lower = np.where(col < 0, lo_p, np.maximum(colf, lo_p))
    upper = np.minimum(colf + 1, hi_p)
    if not one.all():  # a part across columns: each piece its share of the part's height
        width_p = hi_p - lo_p
        with np.errstate(divide="ignore", invalid="ignore"):
            dy_p = dy_p * np.where(width_p > 0, (upper - lower) / width_p, 1.0)
    # the part of the piece's pixel to its right: 1 - its mean x within the pixel
    right = np.clip(colf + 1 - (lower + upper) * 0.5, 0.0, 1.0) * dy_p
    keep = col < width
    if not keep.all():
        part, col, dy_p, right = part[keep], col[keep], dy_p[keep], right[keep]
    return Pieces(edge[part], row[part], col, dy_p, right)


def coverage_grid(edges: Edges, zones: int, height: int, width: int) -> np.ndarray:
    """The covered fraction of every pixel by each zone ``0 .. zones - 1``, a dense
    ``(zones, height, width)`` array (for tests and small grids)."""
    p = pieces(edges, height, width)
    acc = np.zeros((zones, height, width + 2))
    z = edges.zone[p.edge]
    # dy - right to the pixel itself counted from its start, ``right`` more there
    np.add.at(acc, (z, p.row, p.col + 2), p.dy)
    np.add.at(acc, (z, p.row, p.col + 1), p.right)
    np.add.at(acc, (z, p.row, p.col + 2), -p.right)
    return np.cumsum(acc, axis=2)[:, :, 1:-1]


def shared_edges(edges: Edges) -> tuple[np.ndarray, np.ndarray]:
    """Edges two zones share, run in opposite directions (the border of two neighbours):
    ``(keep, other)``, one edge of each such pair kept and ``other`` the zone of its neighbour
    (-1 for an edge no other zone shares). The neighbour's pieces of a shared edge are the
    kept one's, negated: a border is cut into pieces once, not once for each side."""
    x0, y0, x1, y1 = edges.x0, edges.y0, edges.x1, edges.y1
    flip = (x0 > x1) | ((x0 == x1) & (y0 > y1))
    ax, ay = np.where(flip, x1, x0), np.where(flip, y1, y0)
    bx, by = np.where(flip, x0, x1), np.where(flip, y0, y1)
    order = np.lexsort((by, bx, ay, ax))
    key = np.column_stack([ax, ay, bx, by])[order]
    same = np.all(key[1:] == key[:-1], axis=1)  # sorted position i equals i + 1
    # pairs: a run of exactly two equal edges, in opposite directions, of two zones
    before = np.concatenate([[False], same[:-1]])
    after = np.concatenate([same[1:], [False]])
    i = np.flatnonzero(same & ~before & ~after)
    a, b = order[i], order[i + 1]
    pair = (flip[a] != flip[b]) & (edges.zone[a] != edges.zone[b])
    a, b = a[pair], b[pair]
    keep = np.ones(len(edges), dtype=bool)
    keep[b] = False
    other = np.full(len(edges), -1, dtype=np.int64)
    other[a] = edges.zone[b]
    return keep, other
