"""The zones of ``geoseg stats``: read from a vector file (any CRS, one key field) and turned
once into edges in the raster's pixels, so each block task gets only the edges that reach it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import ResultsError, first_line

if TYPE_CHECKING:
    pass


@dataclass
class Zones:
    """Zones read from a vector file: their keys, geometries (WKB, own CRS) and CRS."""

    path: str
    field: str
    keys: list[Any]
    wkb: np.ndarray
    crs_wkt: str
    layer: str | None = None


def read_zones(path: str | os.PathLike[str], zone_field: str | None) -> Zones:
    """Read a zones file; one line for a missing file, a missing CRS or an unknown field (the
    fields it has are listed). Without ``zone_field`` zones are keyed by their feature id."""
    import pyogrio
    from pyogrio.errors import DataSourceError

    path = str(path)
    if "://" not in path and not path.startswith("/vsi") and not os.path.exists(path):
        raise ResultsError(f"zones file not found: {path}; check the path")
    try:
        info = pyogrio.read_info(path)
    except (DataSourceError, OSError) as exc:
        raise ResultsError(
            f"cannot read zones {path}: {first_line(exc)}; give a GeoPackage, "
            "GeoJSON, Shapefile or another OGR vector file"
        ) from None
    fields = [str(f) for f in info["fields"]]
    if not info.get("crs"):
        raise ResultsError(
            f"zones {path} have no CRS; assign one (ogr2ogr -a_srs EPSG:XXXX) so they "
            "can be matched with the raster"
        )
    if zone_field is not None and zone_field not in fields:
        raise ResultsError(
            f"zones {path} have no field {zone_field!r}; their fields are: "
            + (", ".join(fields) or "(none)")
        )
    if info.get("geometry_type") and "polygon" not in str(info["geometry_type"]).lower():
        raise ResultsError(
            f"zones {path} hold {info['geometry_type']} geometries; zones must be polygons"
        )
    meta, fids, wkb, data = pyogrio.raw.read(
        path, columns=[zone_field] if zone_field else [], return_fids=True
    )
    from pyproj import CRS as ProjCRS

    keys = list(data[0]) if zone_field else [int(f) for f in fids]
    crs_wkt = ProjCRS.from_user_input(meta["crs"]).to_wkt()
    return Zones(
        path,
        zone_field or "zone",
        [k.item() if hasattr(k, "item") else k for k in keys],
        wkb,
        crs_wkt,
    )


@dataclass
class ZoneEdges:
    """The zones' edges in the raster's pixels (:class:`~geoseg.results.coverage.Edges`: x =
    column, y = row; a border two zones share once, ``other``: the neighbour, -1 for none),
    with each edge's extent and each zone's bounds, to pick a block's edges."""

    edges: Any
    other: np.ndarray
    bounds: np.ndarray
    ymin: np.ndarray
    ymax: np.ndarray
    xmin: np.ndarray
    geoms: np.ndarray

    def in_block(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``(edges, zones)`` a block needs: the edges, within its rows and not right of it,
        of the zones that reach into it, and the zone and neighbour of each (a neighbour that
        does not reach into the block left out: its other edges are not there; None when no
        zone reaches into it)."""
        import shapely

        b = self.bounds
        near = np.flatnonzero(
            (b[:, 0] < c0 + w) & (b[:, 2] > c0) & (b[:, 1] < r0 + h) & (b[:, 3] > r0)
        )
        if len(near) == 0:
            return None
        hit = np.zeros(len(b) + 1, dtype=bool)  # a spare last: the neighbour -1 reaches nowhere
        hit[near[shapely.intersects(self.geoms[near], shapely.box(c0, r0, c0 + w, r0 + h))]] = True
        e = self.edges
        pick = (hit[e.zone] | hit[self.other]) & (self.ymax > r0) & (self.ymin < r0 + h)
        pick &= self.xmin < c0 + w
        if not pick.any():
            return None
        zone, other = e.zone[pick], self.other[pick]
        xy = np.column_stack([e.x0[pick], e.y0[pick], e.x1[pick], e.y1[pick]])
        # an edge whose zone does not reach into the block: its neighbour's, the other way round
        turn = ~hit[zone]
        xy[turn] = xy[turn][:, [2, 3, 0, 1]]
        zone = np.where(turn, other, zone)
        other = np.where(turn | ~hit[other], -1, other)
        return xy, np.column_stack([zone, other])


def zone_edges(zones: Zones, crs: Any, transform: Any, width: int, height: int) -> ZoneEdges:
    """The zones reprojected into the raster's CRS and then into pixel coordinates (x = column,
    y = row), as edges; one line when none overlaps the raster."""
    import shapely
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer

    from geoseg.results.coverage import polygon_edges, shared_edges

    geoms = shapely.from_wkb(zones.wkb)
    src_crs = ProjCRS.from_wkt(zones.crs_wkt)
    if not src_crs.equals(ProjCRS.from_wkt(crs.to_wkt())):
        tr = Transformer.from_crs(src_crs, ProjCRS.from_wkt(crs.to_wkt()), always_xy=True)

        def reproject(xy: np.ndarray) -> np.ndarray:
            x, y = tr.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        geoms = shapely.transform(geoms, reproject)
    inv = ~transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        col = inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c
        row = inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f
        return np.column_stack([col, row])

    pixel = shapely.make_valid(shapely.transform(geoms, to_pixels))
    extent = shapely.box(0, 0, width, height)
    if not shapely.intersects(pixel, extent).any():
        raise ResultsError(
            f"no zone of {zones.path} overlaps the raster; check that they cover the "
            "same area (and their CRS)"
        )
    edges = polygon_edges(pixel, np.arange(len(pixel)))
    keep, other = shared_edges(edges)
    edges = edges.take(keep)
    shapely.prepare(pixel)
    return ZoneEdges(
        edges,
        other[keep],
        shapely.bounds(pixel),
        np.minimum(edges.y0, edges.y1),
        np.maximum(edges.y0, edges.y1),
        np.minimum(edges.x0, edges.x1),
        pixel,
    )
