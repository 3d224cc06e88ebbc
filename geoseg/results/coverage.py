"""Exact fractions of pixels covered by polygons, by area accumulation: the zones' edges here
(numpy), their pieces and the sums over them in the compiled kernel (geoseg/results/_zonal.c).

Each polygon edge is cut at the pixel grid lines into *pieces*; a piece inside pixel (r, c) that
descends by ``dy`` adds ``dy`` times the part of the pixel's width to its right to pixel (r, c)
and ``dy`` to every pixel after it in the row; summed over the pieces of a row these give, in
every pixel, the exact area of the polygon inside it (the accumulation scan conversion of font
rasterizers).
So a sum over the covered pixels weighted by their fractions is a sum over the pieces, each
weighted by what lies at and to the right of it in its row: its cost follows
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


def coverage_grid(edges: Edges, zones: int, height: int, width: int) -> np.ndarray:
    """The covered fraction of every pixel by each zone ``0 .. zones - 1``, a dense
    ``(zones, height, width)`` array, for tests and small grids (under 65,535 pixels): the
    counting kernel's pieces, with every pixel its own class."""
    from geoseg.results._zonal import count_strip

    n = height * width
    if n >= 65535:
        raise ValueError(f"coverage_grid is for grids under 65,535 pixels, not {height} x {width}")
    lut = np.full(65536, n, np.uint16)
    lut[:n] = np.arange(n)
    pix = np.zeros((zones + 1, n + 1))
    x0, y0, x1, y1 = (
        np.ascontiguousarray(a, np.float64) for a in (edges.x0, edges.y0, edges.x1, edges.y1)
    )
    zone = np.ascontiguousarray(edges.zone, np.int64)
    count_strip(
        np.arange(n, dtype=np.uint16),
        None,
        lut,
        height,
        width,
        n + 1,
        x0,
        y0,
        x1,
        y1,
        zone,
        np.full(len(zone), zones, np.int64),
        zones + 1,
        None,
        pix,
        None,
        None,
        None,
    )
    return pix[:zones, :n].reshape(zones, height, width)


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
