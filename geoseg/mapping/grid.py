"""A map's output grid: one CRS and resolution on a pixel lattice, where each scene lies on it,
the region the scenes cover, and the window an AOI keeps.

The scenes' own CRS, resolution and lattice when they share them (pieces of one scene land on
their own pixels and read as plain windows, so the map reproduces the scene exactly); otherwise
``crs`` and ``resolution``, on the lattice of a scene already on that grid, else on multiples of
the resolution. Everything is in lattice pixels (row, col); no scene is opened here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from geoseg.errors import OptionError, SceneError

if TYPE_CHECKING:
    from geoseg.mapping.sources import MapScene

#: Tolerance, in pixels, for "on the lattice".
EPS = 1e-6


@dataclass(frozen=True)
class Placement:
    """Where a scene lies on the lattice: ``offset`` (row, col of its first pixel) when it is on
    the grid, else None (warped); ``window`` (row0, col0, row1, col1) bounds its pixels."""

    offset: tuple[int, int] | None
    window: tuple[int, int, int, int]


@dataclass(frozen=True)
class MapGrid:
    """The output grid: lattice, the region the scenes cover and the output window (an AOI's
    bounding box on the lattice, or the whole region), all in lattice rows and columns."""

    crs: Any
    resolution: tuple[float, float]
    origin: tuple[float, float]
    region: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def height(self) -> int:
        return self.window[2] - self.window[0]

    @property
    def width(self) -> int:
        return self.window[3] - self.window[1]

    @property
    def transform(self) -> Any:
        """The output's geotransform (its first pixel at the window's corner)."""
        from affine import Affine

        (rx, ry), (x0, y0) = self.resolution, self.origin
        return Affine(rx, 0.0, x0 + self.window[1] * rx, 0.0, -ry, y0 - self.window[0] * ry)

    def relative(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A lattice box in the output's rows and columns."""
        r, c = self.window[0], self.window[1]
        return box[0] - r, box[1] - c, box[2] - r, box[3] - c

    def to_pixels(self, geom: Any) -> Any:
        """A geometry in the output CRS in lattice pixel coordinates (x: column, y: row)."""
        import shapely

        (rx, ry), (x0, y0) = self.resolution, self.origin
        return shapely.transform(geom, lambda xy: (xy - [x0, y0]) * [1 / rx, -1 / ry])


def parse_crs(text: str) -> Any:
    """``--crs``: an EPSG code, a PROJ string or WKT; one line when it cannot be parsed."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(text)
    except (CRSError, ValueError) as exc:
        raise OptionError(
            f"--crs {text!r} cannot be parsed ({exc}); give an EPSG code like EPSG:32633, "
            "a PROJ string or WKT"
        ) from None


def plan_grid(
    scenes: Sequence[MapScene], crs: str | None = None, resolution: float | None = None
) -> tuple[MapGrid, list[Placement]]:
    """The lattice and every scene's placement on it (see the module); the output window is the
    whole region (see :func:`clip_to_aoi`)."""
    out_crs = parse_crs(crs) if crs is not None else None
    if resolution is not None and not (resolution > 0 and math.isfinite(resolution)):
        raise OptionError(
            f"--resolution {resolution} must be a positive number of CRS units (metres for UTM)"
        )
    if out_crs is None:
        first = scenes[0]
        other = next((s for s in scenes[1:] if s.crs != first.crs), None)
        if other is not None:
            raise SceneError(
                f"scenes are on different CRSs ({first.name}: {_crs_name(first.crs)}, {other.name}: "
                f"{_crs_name(other.crs)}); give --crs (for example --crs {_crs_name(first.crs)}) and --resolution"
            )
        out_crs = first.crs
    if resolution is None:
        sizes = {(s.transform.a, -s.transform.e) for s in scenes}
        off = next((s for s in scenes if s.crs != out_crs), None)
        if off is not None or len(sizes) != 1:
            why = (
                f"{off.name} is not on --crs"
                if off is not None
                else (
                    "the scenes' pixel sizes differ ("
                    + ", ".join(f"{a:g}x{b:g}" for a, b in sorted(sizes)[:3])
                    + ")"
                )
            )
            raise SceneError(f"{why}; give --resolution (the output's pixel size in CRS units)")
        res = sizes.pop()
    else:
        res = (float(resolution), float(resolution))
    rx, ry = res
    ref = next(
        (
            s
            for s in scenes
            if s.crs == out_crs and _close(s.transform.a, rx) and _close(-s.transform.e, ry)
        ),
        None,
    )
    origin = (ref.transform.c, ref.transform.f) if ref is not None else (0.0, 0.0)
    placements = [_place(s, out_crs, res, origin) for s in scenes]
    region = (
        min(p.window[0] for p in placements),
        min(p.window[1] for p in placements),
        max(p.window[2] for p in placements),
        max(p.window[3] for p in placements),
    )
    return MapGrid(out_crs, res, origin, region, region), placements


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else (crs.to_string() if crs is not None else "no CRS")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= EPS * max(abs(a), abs(b))


def _place(
    scene: MapScene, crs: Any, res: tuple[float, float], origin: tuple[float, float]
) -> Placement:
    t = scene.transform
    rx, ry = res
    x0, y0 = origin
    if scene.crs == crs and _close(t.a, rx) and _close(-t.e, ry):
        col, row = (t.c - x0) / rx, (y0 - t.f) / ry
        if abs(col - round(col)) < EPS * 1e3 and abs(row - round(row)) < EPS * 1e3:
            r, c = round(row), round(col)
            return Placement((r, c), (r, c, r + scene.height, c + scene.width))
    from rasterio.warp import transform_bounds

    left, top = t.c, t.f
    right, bottom = left + t.a * scene.width, top + t.e * scene.height
    try:
        west, b, r_, tp = transform_bounds(scene.crs, crs, left, bottom, right, top, densify_pts=21)
    except Exception as exc:  # noqa: BLE001 - PROJ's own errors: one line naming the scene
        raise SceneError(f"scene {scene.name} cannot be placed on the output CRS: {exc}") from None
    c0, c1 = math.floor((west - x0) / rx + EPS), math.ceil((r_ - x0) / rx - EPS)
    r0, r1 = math.floor((y0 - tp) / ry + EPS), math.ceil((y0 - b) / ry - EPS)
    if not all(math.isfinite(v) for v in (west, b, r_, tp)) or c1 <= c0 or r1 <= r0:
        raise SceneError(
            f"scene {scene.name} does not map onto the output CRS; choose another --crs"
        )
    return Placement(None, (r0, c0, r1, c1))


def read_aoi(path: str, crs: Any) -> Any:
    """The union of an AOI file's geometries (any vector format OGR reads, any CRS) in ``crs``."""
    import pyogrio
    import shapely
    from pyproj import Transformer
    from rasterio.crs import CRS

    from geoseg.errors import first_line

    try:
        info = pyogrio.read_info(path)
        _, _, wkb, _ = pyogrio.raw.read(path, columns=[])
    except Exception as exc:  # noqa: BLE001 - pyogrio raises its own DataSourceError family
        raise OptionError(
            f"cannot read --aoi {path}: {first_line(exc)}; give a vector file (.gpkg .geojson .shp ...)"
        ) from None
    if not info.get("crs"):
        raise OptionError(
            f"--aoi {path} has no CRS; save it with one (ogr2ogr -a_srs EPSG:4326) so it can be placed"
        )
    geoms = (
        [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty]
        if wkb is not None
        else []
    )
    area = shapely.union_all([g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")])
    if area.is_empty:
        raise OptionError(f"--aoi {path} holds no polygons; give the area as polygons")
    src = CRS.from_user_input(info["crs"])
    if src != crs:
        tr = Transformer.from_crs(src.to_wkt(), crs.to_wkt(), always_xy=True)
        area = shapely.transform(area, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return area


def clip_to_aoi(
    grid: MapGrid, boxes: Any, aoi: Any, path: str, alignment: int = 1
) -> tuple[MapGrid, Any]:
    """The grid's output window cut to the AOI's bounding box (within the region), and the AOI
    in the output's pixel coordinates; ``boxes``: an STRtree of the scenes' windows (lattice).

    The window starts on the model's ``alignment`` (its stride) counted from the region's
    corner, so its tiles line up with those of the whole region and its pixels equal them."""
    import shapely.affinity

    px = grid.to_pixels(aoi)
    if not len(boxes.query(px, predicate="intersects")):
        raise SceneError(
            f"no scene intersects the AOI {path}; check that the AOI and the scenes cover one area"
        )
    c0, r0, c1, r1 = px.bounds
    R0, C0, R1, C1 = grid.region
    top, left = max(R0, math.floor(r0)), max(C0, math.floor(c0))
    top, left = R0 + (top - R0) // alignment * alignment, C0 + (left - C0) // alignment * alignment
    window = (top, left, min(R1, math.ceil(r1)), min(C1, math.ceil(c1)))
    clipped = MapGrid(grid.crs, grid.resolution, grid.origin, grid.region, window)
    return clipped, shapely.affinity.translate(px, -window[1], -window[0])
