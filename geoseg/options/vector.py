"""Options of polygons: the vector formats geoseg writes and how a class raster becomes polygons
(:class:`VectorOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from geoseg.options.fields import check_fields, option_help

#: Polygon file formats by extension: (OGR driver, holds any CRS). What ``geoseg vectorize``
#: writes; a driver's first extension is its name in a job file's ``vector.format``.
VECTOR_FORMATS: dict[str, tuple[str, bool]] = {
    ".gpkg": ("GPKG", True),
    ".fgb": ("FlatGeobuf", True),
    ".geojson": ("GeoJSON", False),
    ".json": ("GeoJSON", False),
    ".shp": ("ESRI Shapefile", True),
    ".parquet": ("Parquet", True),
    ".geoparquet": ("Parquet", True),
}


def _format_names() -> tuple[str, ...]:
    names: dict[str, str] = {}
    for ext, (driver, _) in VECTOR_FORMATS.items():
        names.setdefault(driver, ext[1:])
    return tuple(names.values())


#: One name per polygon format (gpkg, fgb, geojson, shp, parquet): job files' ``vector.format``.
VECTOR_FORMAT_NAMES: tuple[str, ...] = _format_names()
#: The formats for help texts: ".gpkg .fgb .geojson .shp .parquet".
VECTOR_FORMAT_HELP = " ".join(f".{n}" for n in VECTOR_FORMAT_NAMES)


@dataclass(frozen=True)
class VectorOptions:
    """How a class raster becomes polygons: ``geoseg.vector.vectorize`` keywords, ``geoseg vectorize``
    options and the job file's ``vector`` keys (plus ``format``)."""

    connectivity: Literal[4, 8] = field(
        default=4, metadata=option_help("Pixel neighbourhood of a region (GDAL's default is 4).")
    )
    skip_classes: tuple[int, ...] = field(
        default=(),
        metadata=option_help(
            "Class value to leave out (repeatable), e.g. background.", flag="skip_class"
        ),
    )
    min_area: float = field(
        default=0.0,
        metadata=option_help(
            "Merge regions smaller than this (square CRS units) into a neighbour.", min=0
        ),
    )
    simplify: float | None = field(
        default=None,
        metadata=option_help(
            "Simplify the layer as a coverage with this tolerance (CRS units).", min=0
        ),
    )
    block_size: int | None = field(
        default=None, metadata=option_help("Block size in pixels (default ~1024).", min=64)
    )
    dst_crs: str | None = field(
        default=None,
        metadata=option_help(
            "Write polygons in this CRS (e.g. EPSG:4326); areas stay measured in the raster's CRS.",
            metavar="CRS",
        ),
    )
    style: bool = field(
        default=True,
        metadata=option_help(
            "Add QGIS's default style, categorized by class in the model's colours "
            "(GeoPackage: layer_styles table; other formats: a .qml sidecar)."
        ),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_classes", tuple(self.skip_classes))
        check_fields(self)
