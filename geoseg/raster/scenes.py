"""Scenes that are not one raster file: band files and STAC items, shown to GDAL as one VRT.

A scene given as several single-band files (Sentinel-2's ``*_B02.tif`` ...) or as a STAC item
becomes a VRT XML string: bands in the model's order, every band on the finest band's grid
(resampled by GDAL on read, window by window; nothing stacked is written to disk). The string
is what a task carries: workers open it with ``rasterio.open`` like any path.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from geoseg.errors import SceneError
from geoseg.options import Resampling, choices
from geoseg.paths import is_stac_item, is_vrt_xml, mosaic_tokens, vrt_sources

#: GDAL resampling names usable on a VRT source (``--resampling``, a PredictOptions field).
RESAMPLING: tuple[str, ...] = choices(Resampling)
DEFAULT_RESAMPLING = "bilinear"

_GDAL_TYPES = {
    "uint8": "Byte",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}
#: STAC media types GDAL reads as rasters, preferred in this order when several assets match.
_RASTER_TYPES = (
    "image/tiff; application=geotiff; profile=cloud-optimized",
    "image/tiff",
    "image/jp2",
)


@dataclass(frozen=True)
class ResolvedScene:
    """A scene as GDAL opens it (a path or a VRT XML string) and what it was made from."""

    dataset: str
    bands: tuple[str, ...] = ()
    stac_item: str | None = None
    band_names: tuple[str, ...] = ()


def resolve_scene(
    scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    band_names: Sequence[str],
    resampling: str = DEFAULT_RESAMPLING,
    match_names: bool = True,
) -> ResolvedScene:
    """What GDAL opens for ``scene``: one raster path as it is, band files or a STAC item as a VRT.

    Band files are put into the model's band order when their names say which band they hold
    (``T33UUU_B02.tif``), else taken in the order given; ``match_names=False`` (an explicit
    ``--bands``) keeps the given order. Every check (CRS, overlap, readability) runs here,
    before any work.
    """
    if resampling not in RESAMPLING:
        raise SceneError(f"unknown --resampling {resampling!r}; use one of {', '.join(RESAMPLING)}")
    if isinstance(scene, (str, os.PathLike)):
        paths = [str(scene)]
    else:
        paths = [str(s) for s in scene]
    if not paths:
        raise SceneError("no scene given; give a raster, band files or a STAC item")
    if len(paths) == 1:
        if is_stac_item(paths[0]):
            return _from_stac(paths[0], band_names, resampling)
        return ResolvedScene(paths[0])
    stac = [p for p in paths if is_stac_item(p)]
    if stac:
        raise SceneError(f"{stac[0]} is a STAC item: give it alone, not with other files")
    if match_names and len(paths) != len(band_names):
        raise SceneError(
            f"{len(paths)} band files given but the model expects {len(band_names)} bands "
            f"({', '.join(band_names)}); give one file per band, or pick files with --bands"
        )
    ordered = order_band_files(paths, band_names) if match_names else paths
    matched = match_names and ordered != paths
    xml = build_vrt(ordered, resampling, descriptions=list(band_names) if matched else None)
    return ResolvedScene(xml, tuple(ordered), None, tuple(band_names) if matched else ())


def _band_pattern(name: str) -> re.Pattern[str]:
    """A band name as a word in a file name: ``B02`` in ``T33_B02_10m.tif``; not ``B8`` in ``B8A``."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.IGNORECASE)


def order_band_files(paths: Sequence[str], band_names: Sequence[str]) -> list[str]:
    """Band files in the model's band order when each file name names one of its bands, else as given.

    A file name naming a model band at another position than given, without every band being
    named, is refused: silently feeding red as blue is worse than an error.
    """
    stems = [os.path.splitext(os.path.basename(p.rstrip("/")))[0] for p in paths]
    hits = [
        [i for i, n in enumerate(band_names) if n and _band_pattern(n).search(s)] for s in stems
    ]
    unique = [h[0] if len(h) == 1 else None for h in hits]
    if (
        len(paths) == len(band_names)
        and None not in unique
        and sorted(unique) == list(range(len(band_names)))  # type: ignore[type-var]
    ):
        by_band = {b: p for b, p in zip(unique, paths)}
        return [by_band[i] for i in range(len(band_names))]
    for pos, (p, h) in enumerate(zip(paths, unique)):
        if h is not None and h != pos:
            raise SceneError(
                f"band file {os.path.basename(p)} looks like band {band_names[h]}, but is given as "
                f"band {pos + 1} and not every file names a model band ({', '.join(band_names)}); "
                "name each file after its band or give the files in the model's band order"
            )
    return list(paths)


@dataclass(frozen=True)
class _Band:
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any
    transform: Any
    nodata: float | None
    block: tuple[int, int]


def _inspect(path: str) -> _Band:
    """Size, grid and type of one band file, with open_scene's one-line errors."""
    from geoseg.raster.read import open_scene

    info = open_scene(path)
    return _Band(
        info.path,
        info.width,
        info.height,
        info.count,
        info.dtype,
        info.crs,
        info.transform,
        info.nodata,
        info.block_shape,
    )


def _absolute(path: str) -> str:
    """Local paths made absolute (workers may run elsewhere); GDAL paths and URLs unchanged."""
    from geoseg.paths import is_virtual

    return path if is_virtual(path) else os.path.abspath(path)


def build_vrt(
    paths: Sequence[str],
    resampling: str = DEFAULT_RESAMPLING,
    descriptions: Sequence[str] | None = None,
) -> str:
    """VRT XML stacking single-band files onto the finest grid, over the area all of them cover."""
    bands = [_inspect(_absolute(p)) for p in paths]
    for b in bands:
        if b.count != 1:
            raise SceneError(
                f"band file {b.path} holds {b.count} bands; give one file per band, or the "
                "stacked file alone with --bands"
            )
    georef = [b for b in bands if b.crs is not None]
    if georef and len(georef) != len(bands):
        bare = next(b for b in bands if b.crs is None)
        raise SceneError(
            f"band file {bare.path} has no CRS while the others do; georeference it first"
        )
    if georef:
        crs0 = bands[0].crs
        for b in bands[1:]:
            if b.crs != crs0:
                raise SceneError(
                    f"band files are on different CRSs ({os.path.basename(bands[0].path)}: "
                    f"{crs0.to_string()}, {os.path.basename(b.path)}: {b.crs.to_string()}); "
                    "reproject them onto one CRS first (gdalwarp -t_srs)"
                )
    for b in bands:
        t = b.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise SceneError(
                f"band file {b.path} has a rotated or flipped grid; warp it north-up first (gdalwarp)"
            )
    finest = min(bands, key=lambda b: abs(b.transform.a * b.transform.e))
    ft = finest.transform
    # the area every band covers, snapped onto the finest band's grid
    x0 = max(b.transform.c for b in bands)
    x1 = min(b.transform.c + b.width * b.transform.a for b in bands)
    y1 = min(b.transform.f for b in bands)
    y0 = max(b.transform.f + b.height * b.transform.e for b in bands)
    eps = 1e-6
    c0 = math.ceil((x0 - ft.c) / ft.a - eps)
    c1 = math.floor((x1 - ft.c) / ft.a + eps)
    r0 = math.ceil((ft.f - y1) / -ft.e - eps)
    r1 = math.floor((ft.f - y0) / -ft.e + eps)
    if c1 <= c0 or r1 <= r0:
        raise SceneError(
            "band files do not overlap: "
            + "; ".join(
                f"{os.path.basename(b.path)} covers x {b.transform.c:.6g}..{b.transform.c + b.width * b.transform.a:.6g}, "
                f"y {b.transform.f + b.height * b.transform.e:.6g}..{b.transform.f:.6g}"
                for b in bands
            )
            + "; give bands of one scene"
        )
    width, height = c1 - c0, r1 - r0
    ox, oy = ft.c + c0 * ft.a, ft.f + r0 * ft.e
    dtype = _common_dtype([b.dtype for b in bands])
    gtype = _GDAL_TYPES[dtype]
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if georef:
        parts.append(f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(bands[0].crs.to_wkt())}</SRS>')
        parts.append(f"  <GeoTransform>{ox!r}, {ft.a!r}, 0.0, {oy!r}, 0.0, {ft.e!r}</GeoTransform>")
    bh, bw = finest.block
    for i, b in enumerate(bands, start=1):
        t = b.transform
        sx = (ox - t.c) / t.a
        sy = (t.f - oy) / -t.e
        sw = width * ft.a / t.a
        sh = height * ft.e / t.e
        same = (
            all(abs(v - round(v)) < eps for v in (sx, sy, sw, sh))
            and round(sw) == width
            and round(sh) == height
        )
        src_rect = (
            f'<SrcRect xOff="{round(sx)}" yOff="{round(sy)}" xSize="{width}" ySize="{height}"/>'
            if same
            else f'<SrcRect xOff="{sx!r}" yOff="{sy!r}" xSize="{sw!r}" ySize="{sh!r}"/>'
        )
        desc = (
            descriptions[i - 1] if descriptions else os.path.splitext(os.path.basename(b.path))[0]
        )
        nodata = (
            f"    <NoDataValue>{_nodata_text(b.nodata)}</NoDataValue>\n"
            if b.nodata is not None
            else ""
        )
        kind = "ComplexSource" if b.nodata is not None else "SimpleSource"
        src_nodata = (
            f"      <NODATA>{_nodata_text(b.nodata)}</NODATA>\n" if b.nodata is not None else ""
        )
        resample = "" if same else f" resampling={quoteattr(resampling)}"
        parts.append(
            f'  <VRTRasterBand dataType="{gtype}" band="{i}" blockXSize="{bw}" blockYSize="{bh}">\n'
            f"    <Description>{escape(desc)}</Description>\n{nodata}"
            f"    <{kind}{resample}>\n"
            f'      <SourceFilename relativeToVRT="0">{escape(b.path)}</SourceFilename>\n'
            f"      <SourceBand>1</SourceBand>\n"
            f"      {src_rect}\n"
            f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>\n{src_nodata}'
            f"    </{kind}>\n"
            f"  </VRTRasterBand>"
        )
    parts.append("</VRTDataset>")
    return "\n".join(parts)


def _nodata_text(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def _common_dtype(dtypes: Sequence[str]) -> str:
    """One type that holds every band's values (Sentinel-2: all uint16, unchanged)."""
    from geoseg.raster.read import SUPPORTED_DTYPES

    common = np.result_type(*[np.dtype(d) for d in dtypes]).name
    return common if common in SUPPORTED_DTYPES else "float64"


# --- STAC items -----------------------------------------------------------------------------


def read_stac_item(href: str) -> dict[str, Any]:
    """A STAC item from a local file or an http(s) URL, checked to be an item with assets."""
    url = href.replace("/vsicurl/", "", 1) if href.startswith("/vsicurl/") else href
    try:
        if re.match(r"https?://", url):
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (http(s) only)
                text = resp.read().decode("utf-8")
        elif "://" in url or url.startswith("/vsi"):
            raise SceneError(
                f"STAC item {href}: geoseg reads STAC items from local files or http(s) URLs; "
                "download the item (its assets may stay remote)"
            )
        else:
            with open(url, encoding="utf-8") as f:
                text = f.read()
    except SceneError:
        raise
    except FileNotFoundError:
        raise SceneError(f"STAC item not found: {href}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"cannot read STAC item {href}: {exc}") from None
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SceneError(f"{href} is not JSON ({exc}); give a STAC item or a raster") from None
    check_stac_item(item, href, "give a STAC item or a raster")
    return item


def check_stac_item(item: Any, name: str, hint: str) -> None:
    """A parsed document must be a STAC item: a GeoJSON Feature with assets (else one line
    naming ``name``, then ``hint``)."""
    if (
        not isinstance(item, dict)
        or item.get("type") != "Feature"
        or not isinstance(item.get("assets"), dict)
    ):
        raise SceneError(f"{name} is not a STAC item (a GeoJSON Feature with assets); {hint}")


def _asset_names(key: str, asset: dict[str, Any]) -> set[str]:
    """Every name an asset answers to: its key, and its bands' names and common names."""
    names = {key.lower()}
    for band in list(asset.get("eo:bands") or []) + list(asset.get("bands") or []):
        if isinstance(band, dict):
            for field in ("name", "common_name", "eo:common_name"):
                if isinstance(band.get(field), str):
                    names.add(band[field].lower())
    return names


def is_raster_asset(asset: dict[str, Any]) -> bool:
    """Whether a STAC asset is a raster GDAL reads, by media type (or by file suffix without one)."""
    mtype = str(asset.get("type", "")).lower()
    href = str(asset.get("href", "")).lower()
    return (
        mtype.startswith("image/tiff")
        or mtype.startswith("image/jp2")
        or mtype.startswith("application/x-hdf")
        or (not mtype and href.endswith((".tif", ".tiff", ".jp2", ".vrt")))
    )


def match_assets(
    item: dict[str, Any], band_names: Sequence[str], href: str
) -> list[tuple[str, dict[str, Any]]]:
    """For each model band, the item's raster asset that names it (key, eo:bands name or common name)."""
    assets = {k: a for k, a in item["assets"].items() if isinstance(a, dict) and "href" in a}
    chosen: list[tuple[str, dict[str, Any]]] = []
    missing: list[str] = []
    for band in band_names:
        want = band.lower()
        hits = [
            (k, a) for k, a in assets.items() if want in _asset_names(k, a) and is_raster_asset(a)
        ]
        if not hits:
            missing.append(band)
            continue
        # single-band assets first (not a 3-band "visual" that also lists red), then by key, then
        # cloud-optimized GeoTIFF before other rasters
        hits.sort(key=lambda ka: (_band_count(ka[1]) > 1, ka[0].lower() != want, _type_rank(ka[1])))
        chosen.append(hits[0])
    if missing:
        have = []
        for k, a in assets.items():
            extra = sorted(_asset_names(k, a) - {k.lower()})
            have.append(k + (f" ({', '.join(extra)})" if extra else ""))
        raise SceneError(
            f"STAC item {href} has no asset for band(s) {', '.join(missing)}: the model wants "
            f"{', '.join(band_names)}; the item has {', '.join(have) or 'no assets'}"
        )
    return chosen


def _band_count(asset: dict[str, Any]) -> int:
    return max(len(asset.get("eo:bands") or []), len(asset.get("bands") or []), 1)


def _type_rank(asset: dict[str, Any]) -> int:
    mtype = str(asset.get("type", "")).lower().replace(" ", "")
    for i, t in enumerate(_RASTER_TYPES):
        if mtype.startswith(t.replace(" ", "")):
            return i
    return len(_RASTER_TYPES)


def asset_path(href: str, item_href: str) -> str:
    """A GDAL path for an asset href: relative to the item, http(s) through /vsicurl/, s3 through /vsis3/."""
    if href.startswith("/vsi"):
        return href
    parsed = urllib.parse.urlparse(href)
    if parsed.scheme in ("http", "https"):
        return "/vsicurl/" + href
    if parsed.scheme in ("s3", "gs"):
        return f"/vsi{parsed.scheme}/{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    base = item_href.replace("/vsicurl/", "", 1)
    if re.match(r"https?://", base):
        return "/vsicurl/" + urllib.parse.urljoin(base, href)
    if os.path.isabs(href):
        return href
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))


def _from_stac(href: str, band_names: Sequence[str], resampling: str) -> ResolvedScene:
    return stac_item_scene(read_stac_item(href), href, band_names, resampling)


def stac_item_scene(
    item: dict[str, Any], href: str, band_names: Sequence[str], resampling: str = DEFAULT_RESAMPLING
) -> ResolvedScene:
    """A STAC item already read (``href``: where it came from, the base of relative assets) as
    a VRT of the assets matching the model's bands; each asset's readability is checked."""
    chosen = match_assets(item, band_names, href)
    paths = []
    for key, asset in chosen:
        path = asset_path(str(asset["href"]), href)
        try:
            _inspect(path)
        except SceneError as exc:
            raise SceneError(
                f"STAC item {href}: asset {key!r} ({asset['href']}) cannot be read: {exc}"
            ) from None
        paths.append(path)
    xml = build_vrt(paths, resampling, descriptions=list(band_names))
    item_href = href if "://" in href or href.startswith("/vsi") else os.path.abspath(href)
    return ResolvedScene(xml, tuple(paths), item_href, tuple(band_names))


def file_token(path: str) -> tuple[Any, ...] | list[Any] | None:
    """What identifies a scene's content cheaply, in task keys and batch records, so a changed
    file never reuses results from its old content: a local file's size and modification time;
    one token per source file of a VRT string; for a local STAC item also one per raster asset,
    by key (an asset rewritten in place is a new scene); None for virtual paths."""
    if is_vrt_xml(path):
        return [file_token(s) for s in vrt_sources(path)]
    if path.startswith("geoseg-mosaic:"):  # a map's cell records its scenes' tokens
        return mosaic_tokens(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if is_stac_item(path):
        return st.st_size, st.st_mtime_ns, _stac_asset_tokens(path)
    return st.st_size, st.st_mtime_ns


def _stac_asset_tokens(item_path: str) -> dict[str, Any] | None:
    """:func:`file_token` of each raster asset of a local STAC item, by asset key (None for an
    unreadable item)."""
    try:
        item = read_stac_item(item_path)
    except SceneError:
        return None
    return {
        key: file_token(asset_path(str(asset["href"]), item_path))
        for key, asset in sorted(item["assets"].items())
        if isinstance(asset, dict) and "href" in asset and is_raster_asset(asset)
    }
