"""A small PNG of a class raster to look at: class colours, a legend of class names and areas,
a scale bar and north-up grid labels (Pillow; read from the raster's overviews)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geoseg.fs import check_distinct_paths, check_output_path
from geoseg.raster.read import no_georef_warning, read_env
from geoseg.results.classes import colour_of, name_of, raster_class_info
from geoseg.results.tables import publish

#: Longest side of the map in the PNG, pixels.
MAP_SIZE = 768
#: Colour of nodata pixels in the PNG.
NODATA_RGB = (240, 240, 240)
_INK = (30, 30, 30)
_LEFT, _TOP, _BOTTOM, _GAP, _LEGEND = 78, 30, 64, 16, 250


def quicklook_path(raster: str | os.PathLike[str]) -> Path:
    """Where a class raster's quicklook goes by default: beside it, ``.png`` for ``.tif``."""
    return Path(raster).with_suffix(".png")


def quicklook(
    raster: str | os.PathLike[str],
    png: str | os.PathLike[str] | None = None,
    areas: dict[int, dict[str, Any]] | None = None,
    size: int = MAP_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write a quicklook PNG of a class raster (default :func:`quicklook_path`); ``areas`` (from
    :func:`geoseg.results.stats.class_areas`) adds each class's area to the legend."""
    out = check_output_path(
        png if png is not None else quicklook_path(raster), overwrite, "quicklook"
    )
    check_distinct_paths({"class raster": raster}, {"quicklook": out})
    tmp = _stage_png(out, render(raster, areas, size))
    publish(tmp, out)
    return out


def output_quicklook(output: str | os.PathLike[str], cells: bool, overwrite: bool) -> Path | None:
    """Where ``geoseg predict --quicklook`` puts the PNG of ``output``, checked before any work:
    ``OUTPUT.png`` beside a single COG (an existing one only with ``overwrite``), or
    ``OUTPUT/quicklook.png`` in a ``cells`` folder (replaced on every run, as the folder's
    mosaic is). None, with a warning, for an ``s3://`` output: it is not uploaded."""
    import warnings

    from geoseg.errors import GeosegWarning
    from geoseg.objectstore.urls import is_s3_url

    if is_s3_url(str(output)):
        warnings.warn(
            f"--quicklook: no quicklook for the object-store output {output}; run "
            "geoseg's quicklook on a local copy",
            GeosegWarning,
            stacklevel=3,
        )
        return None
    if cells:
        return Path(output) / "quicklook.png"
    return check_output_path(quicklook_path(output), overwrite, "quicklook")


def output_quicklook_write(
    output: str | os.PathLike[str],
    png: Path,
    cells: bool,
    client: Any = None,
    max_in_flight: Any = None,
) -> Path:
    """Write the quicklook of a committed predict output (its ``classes.vrt`` mosaic in a
    ``cells`` folder) with its class areas counted on ``client`` (see :func:`output_quicklook`)."""
    from geoseg.results.stats import class_areas

    raster = Path(output) / "classes.vrt" if cells else Path(output)
    return quicklook(
        raster, png, class_areas(raster, client=client, max_in_flight=max_in_flight), overwrite=True
    )


def _stage_png(path: Path, data: bytes) -> Path:
    from geoseg.fs import stage_bytes

    return stage_bytes(path, data, ".part.png")


def render(
    raster: str | os.PathLike[str],
    areas: dict[int, dict[str, Any]] | None = None,
    size: int = MAP_SIZE,
) -> bytes:
    """The quicklook as PNG bytes (see :func:`quicklook`)."""
    from PIL import Image, ImageDraw
    from rasterio.enums import Resampling
    from rasterio.transform import Affine

    path = str(raster)
    with read_env(path), no_georef_warning(), rasterio.open(path) as src:
        classes, _ = raster_class_info(src, path, warn=False)
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = {}
        scale = max(src.width, src.height) / size
        w, h = max(1, round(src.width / scale)), max(1, round(src.height / scale))
        data = src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        valid = src.read_masks(1, out_shape=(h, w), resampling=Resampling.nearest) > 0
        crs, transform = src.crs, src.transform * Affine.scale(src.width / w, src.height / h)
        nodata = src.nodata
    present = sorted(int(v) for v in np.unique(data[valid]))
    values = sorted(set(classes) | set(present) | {int(v) for v in (areas or {})})
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = NODATA_RGB
    for v in present:
        rgb[(data == v) & valid] = colour_of(classes, cmap, v)
    legend = [
        v
        for v in values
        if v != nodata and (v in present or (areas or {}).get(v, {}).get("area_m2"))
    ]
    font, small = _fonts()
    height = max(_TOP + h + _BOTTOM, _TOP + 40 + 22 * len(legend) + 20)
    canvas = Image.new("RGB", (_LEFT + w + _GAP + _LEGEND, height), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (_LEFT, _TOP))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([_LEFT - 1, _TOP - 1, _LEFT + w, _TOP + h], outline=_INK)
    draw.text((_LEFT, 6), Path(path).name, fill=_INK, font=font)
    north_up = transform.b == 0 and transform.d == 0 and transform.e < 0
    if crs is not None and north_up:
        _grid(draw, transform, crs, w, h, small)
        _scale_bar(draw, transform, crs, w, h, small)
    _legend(draw, legend, classes, cmap, areas, _LEFT + w + _GAP, _TOP, font, small)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fonts() -> tuple[Any, Any]:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=14), ImageFont.load_default(size=11)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        f = ImageFont.load_default()
        return f, f


def nice_step(span: float, target: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``target`` intervals over ``span``."""
    raw = abs(span) / max(target, 1)
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next((m * power for m in (1, 2, 5, 10) if m * power >= raw), 10 * power)


def _label(value: float, geographic: bool, axis: str, step: float) -> str:
    if geographic:
        hemi = ("E" if value >= 0 else "W") if axis == "x" else ("N" if value >= 0 else "S")
        digits = max(0, -math.floor(math.log10(step))) if step < 1 else 0
        return f"{abs(value):.{digits}f}°{hemi}"
    return f"{value:,.0f}".replace(",", " ")


def _grid(draw: Any, transform: Any, crs: Any, w: int, h: int, font: Any) -> None:
    """Ticks and labels in the CRS's coordinates along the map's bottom and left edges, with a
    faint grid over the map."""
    x0, y0 = transform.c, transform.f
    x1, y1 = x0 + transform.a * w, y0 + transform.e * h
    geographic = bool(crs.is_geographic)
    for axis, lo, hi, n in (("x", x0, x1, w), ("y", y1, y0, h)):
        step = nice_step(hi - lo, 5)
        v = math.ceil(lo / step) * step
        while v <= hi + 1e-9 * step:
            if axis == "x":
                px = _LEFT + (v - x0) / transform.a
                draw.line([px, _TOP, px, _TOP + h], fill=(255, 255, 255), width=1)
                draw.line([px, _TOP + h, px, _TOP + h + 5], fill=_INK)
                text = _label(v, geographic, "x", step)
                tw = draw.textlength(text, font=font)
                draw.text((px - tw / 2, _TOP + h + 7), text, fill=_INK, font=font)
            else:
                py = _TOP + (v - y0) / transform.e
                draw.line([_LEFT, py, _LEFT + w, py], fill=(255, 255, 255), width=1)
                draw.line([_LEFT - 5, py, _LEFT, py], fill=_INK)
                text = _label(v, geographic, "y", step)
                tw = draw.textlength(text, font=font)
                draw.text((_LEFT - 7 - tw, py - 6), text, fill=_INK, font=font)
            v += step
    draw.text((_LEFT + w - 14, _TOP + 4), "N", fill=_INK, font=font)
    draw.polygon(
        [(_LEFT + w - 10, _TOP + 18), (_LEFT + w - 14, _TOP + 28), (_LEFT + w - 6, _TOP + 28)],
        fill=_INK,
    )


def _metres_per_pixel(transform: Any, crs: Any, h: int) -> float:
    """Ground length of one quicklook pixel along a row (at the map's middle latitude when
    geographic: the scale differs north to south, the bar says where it holds)."""
    if crs.is_geographic:
        from pyproj import Geod

        from geoseg.results.areas import ellipsoid

        a, f = ellipsoid(crs)
        lat = transform.f + transform.e * h / 2
        _, _, dist = Geod(a=a, f=f).inv(0.0, lat, transform.a, lat)
        return float(dist)
    factor = float(crs.linear_units_factor[1]) if crs.linear_units_factor else 1.0
    return abs(transform.a) * factor


def _scale_bar(draw: Any, transform: Any, crs: Any, w: int, h: int, font: Any) -> None:
    mpp = _metres_per_pixel(transform, crs, h)
    quarter = w * mpp / 4
    power = 10 ** math.floor(math.log10(quarter))
    length = max(
        m * power for m in (1, 2, 5) if m * power <= quarter
    )  # at most a quarter of the map
    px = length / mpp
    x, y = _LEFT, _TOP + h + 30
    draw.rectangle([x, y, x + px / 2, y + 6], fill=_INK)
    draw.rectangle([x + px / 2, y, x + px, y + 6], outline=_INK, fill=(255, 255, 255))
    text = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    where = " at the map's middle latitude" if crs.is_geographic else ""
    draw.text((x + px + 8, y - 4), text + where, fill=_INK, font=font)


def format_area(m2: float, square: str = "²") -> str:
    """An area for people: km² from 1 km² up, else ha (``square="2"`` where a font lacks ²)."""
    if m2 >= 1e6:
        return f"{m2 / 1e6:,.2f} km{square}".replace(",", " ")
    return f"{m2 / 1e4:,.2f} ha".replace(",", " ")


def _legend(
    draw: Any,
    values: list[int],
    classes: dict[int, Any],
    cmap: dict[int, Any],
    areas: dict[int, dict[str, Any]] | None,
    x: int,
    y: int,
    font: Any,
    small: Any,
) -> None:
    draw.text((x, y), "classes" + (" and areas" if areas else ""), fill=_INK, font=font)
    y += 26
    for v in values:
        draw.rectangle([x, y, x + 16, y + 14], fill=colour_of(classes, cmap, v), outline=_INK)
        draw.text((x + 24, y), name_of(classes, v), fill=_INK, font=small)
        if areas and v in areas:
            text = format_area(float(areas[v].get("area_m2", 0.0)), "2")  # Pillow's font has no ²
            tw = draw.textlength(text, font=small)
            draw.text((x + _LEGEND - 10 - tw, y), text, fill=_INK, font=small)
        y += 22
