"""Geometry helpers for polygons: pixel to CRS coordinates, reprojection, and areas and perimeters
in metres."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

if TYPE_CHECKING:
    pass


def apply_transform(geom: Any, transform: Affine) -> Any:
    """Pixel coordinates -> CRS coordinates (exact affine map of every vertex)."""
    import shapely

    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def fn(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

    return shapely.transform(geom, fn)


class Measurer:
    """Area (square metres) and perimeter (metres); geodesic on the ellipsoid for geographic CRSs."""

    def __init__(self, crs: Any) -> None:
        self.geod = None
        self.factor = 1.0
        if crs is not None and crs.is_geographic:
            from pyproj import CRS as ProjCRS
            from pyproj import Geod

            self.geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
        elif crs is not None:
            self.factor = float(crs.linear_units_factor[1]) if crs.linear_units_factor else 1.0

    @classmethod
    def from_wkt(cls, wkt: str | None) -> "Measurer":
        from rasterio.crs import CRS

        return cls(CRS.from_wkt(wkt) if wkt else None)

    def __call__(self, geom: Any) -> tuple[float, float]:
        if self.geod is not None:
            area, perimeter = self.geod.geometry_area_perimeter(geom)
            return abs(area), perimeter
        return geom.area * self.factor**2, geom.length * self.factor

    def many(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Areas and perimeters of an array of geometries (vectorized unless geodesic)."""
        import shapely

        if self.geod is not None:
            pairs = [self(g) for g in geoms]
            return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        return shapely.area(geoms) * self.factor**2, shapely.length(geoms) * self.factor


def reprojector(src_crs: Any, dst_crs: Any) -> Any:
    """A function reprojecting an array of geometries (vertices, x/y order) from the raster's CRS."""
    import shapely
    from pyproj import Transformer

    transformer = Transformer.from_crs(src_crs.to_wkt(), dst_crs.to_wkt(), always_xy=True)

    def xy(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    def apply(geoms: Any) -> Any:
        return shapely.transform(geoms, xy)

    return apply
