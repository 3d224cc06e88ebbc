"""True pixel areas in square metres: constant in a projected CRS, per row in a geographic one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from geoseg.errors import ResultsError


def ellipsoid(crs: Any) -> tuple[float, float]:
    """Semi-major axis (m) and flattening of a CRS's ellipsoid (pyproj's Geod of the CRS)."""
    from pyproj import CRS as ProjCRS

    geod = ProjCRS.from_wkt(crs.to_wkt()).get_geod()
    if geod is None:  # pragma: no cover - every geographic CRS PROJ reads has an ellipsoid
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
    return float(geod.a), float(geod.f)


def _authalic(lat_deg: np.ndarray, a: float, f: float) -> np.ndarray:
    """Area (m²) between the equator and each latitude, per radian of longitude, on the ellipsoid."""
    phi = np.radians(np.clip(lat_deg, -90.0, 90.0))
    s = np.sin(phi)
    if f == 0.0:
        return a * a * s
    e2 = f * (2.0 - f)
    e = math.sqrt(e2)
    b2 = a * a * (1.0 - e2)
    return b2 / 2.0 * (s / (1.0 - e2 * s * s) + np.log((1.0 + e * s) / (1.0 - e * s)) / (2.0 * e))


def row_areas(
    crs: Any, transform: Any, height: int, row_start: int = 0, rows: int | None = None
) -> np.ndarray:
    """Area (m²) of one pixel in each of ``rows`` rows from ``row_start``.

    Projected CRS: the pixel's area from the geotransform (its determinant) in the CRS's linear
    units converted to metres: exact in the map plane, so the projection's own scale error stays
    (an equal-area CRS has none). Geographic CRS: the exact area on the ellipsoid of the
    latitude/longitude cell of each row (closed form of the authalic latitude; a north-up grid).
    """
    rows = height - row_start if rows is None else rows
    if crs is None:
        raise ResultsError(
            "the raster has no CRS, so its pixels have no area; assign one first "
            "(gdal_edit.py -a_srs EPSG:XXXX)"
        )
    if crs.is_geographic:
        if transform.b != 0 or transform.d != 0:
            raise ResultsError(
                "the raster is in a geographic CRS with a rotated grid; warp it "
                "north-up first (gdalwarp) to measure areas"
            )
        a, f = ellipsoid(crs)
        edges = transform.f + transform.e * np.arange(
            row_start, row_start + rows + 1, dtype=np.float64
        )
        band = np.abs(np.diff(_authalic(edges, a, f)))
        return band * math.radians(abs(transform.a))
    factor = float(crs.linear_units_factor[1]) if crs.linear_units_factor else 1.0
    det = abs(transform.a * transform.e - transform.b * transform.d)
    return np.full(rows, det * factor * factor)
