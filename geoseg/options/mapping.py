"""Options of a map (:class:`MapOptions`): its output grid, overlap priority and area."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from geoseg.options.fields import check_fields, option_help, options_from_keywords

#: Which scene wins where a map's scenes overlap (see :mod:`geoseg.mapping`).
MapOrder = Literal["given", "newest"]


@dataclass(frozen=True)
class MapOptions:
    """A map's output grid, overlap priority and area: ``geoseg.map`` keywords, ``geoseg map``
    options and the keys of a job's ``map`` section (besides ``scenes`` and ``output``)."""

    crs: str | None = field(
        default=None,
        metadata=option_help(
            "Output CRS (EPSG:32633, PROJ or WKT); default: the scenes' own, when they share one.",
            metavar="CRS",
        ),
    )
    resolution: float | None = field(
        default=None,
        metadata=option_help(
            "Output pixel size in CRS units; default: the scenes' own, when they share one.",
            min=0,
            min_open=True,
        ),
    )
    order: MapOrder = field(
        default="given",
        metadata=option_help(
            "Which scene wins where scenes overlap: the first given, or the newest (STAC datetime, else "
            "the file's ACQUISITIONDATETIME or TIFFTAG_DATETIME tag)."
        ),
    )
    aoi: str | None = field(
        default=None,
        metadata=option_help(
            "Vector file (any format and CRS): output cut to its bounding box, nodata outside its polygons.",
            metavar="FILE",
        ),
    )

    def __post_init__(self) -> None:
        value: Any = self.resolution  # a job file or a caller may give a whole number
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(self, "resolution", float(value))
        check_fields(self)

    @classmethod
    def from_keywords(cls, base: MapOptions | None = None, **keywords: Any) -> MapOptions:
        """``base`` (or the defaults) with ``keywords`` replaced; an unknown keyword is an error."""
        return options_from_keywords(cls, "map", base, keywords)
