"""Polygon output formats: the driver for a file name, the CRS the file can hold, and what a format
needs (pyarrow for GeoParquet)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import OutputError, VectorizeError
from geoseg.options import VECTOR_FORMATS

if TYPE_CHECKING:
    pass


def output_format(path: Path) -> tuple[str, bool]:
    """GDAL driver for an output path by extension, or a one-line error listing the choices."""
    try:
        return VECTOR_FORMATS[path.suffix.lower()]
    except KeyError:
        raise VectorizeError(
            f"unknown vector format {path.suffix or '(no extension)'!r} for {path.name}; use one of "
            + ", ".join(sorted(VECTOR_FORMATS))
        ) from None


def output_crs(out: Path, src_crs: Any, dst_crs: str | None) -> tuple[Any, Any]:
    """``(target, written)``: the CRS to reproject to (None: keep the raster's) and the CRS the
    file ends up in, checked against the format (GeoJSON holds EPSG:4326 only, as RFC 7946 says)."""
    driver, any_crs = output_format(out)
    target = _target_crs(dst_crs, src_crs)
    written = target if target is not None else src_crs
    if written is not None and not any_crs and written.to_epsg() != 4326:
        raise VectorizeError(
            f"{driver} holds WGS 84 (EPSG:4326) coordinates only, and the raster is in "
            f"{written.to_string()}; add --dst-crs EPSG:4326, or write .gpkg or .fgb instead"
        )
    return target, written


def _target_crs(dst_crs: str | None, src_crs: Any) -> Any:
    """The CRS polygons are written in when ``--dst-crs`` is given (None: the raster's own)."""
    if dst_crs is None:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        crs = CRS.from_user_input(dst_crs)
    except CRSError:
        raise VectorizeError(
            f"--dst-crs {dst_crs!r} is not a CRS PROJ knows; give e.g. EPSG:4326 or a WKT string"
        ) from None
    if src_crs is None:
        raise VectorizeError("--dst-crs needs a raster with a CRS; this one has none")
    return None if crs == src_crs else crs


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise OutputError(
            "GeoParquet output needs pyarrow: pip install 'geoseg[parquet]'"
        ) from None
