"""A map's scenes from what the user gives: raster files and globs, STAC items (files or URLs),
STAC ItemCollections / FeatureCollections (files or URLs), and manifests of paths.

Each scene is read once on the client for its header (grid, bands, type, nodata, date) and kept
as a small :class:`MapScene`; no dataset stays open, so memory grows by a few hundred bytes per
scene. A STAC item's assets are matched to the model's bands and checked readable here
(:func:`geoseg.raster.scenes.stac_item_scene`), before any work.
"""

from __future__ import annotations

import glob
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

from geoseg.errors import SceneError

#: Suffixes of a manifest: a text file of scene paths or URLs, one a line (``#`` comments).
MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".manifest")
#: File tags that give a raster file's acquisition time for ``--order newest``, in this order.
DATE_TAGS = (
    "ACQUISITIONDATETIME",
    "ACQUISITION_DATETIME",
    "ACQUISITION_DATE",
    "DATETIME",
    "TIFFTAG_DATETIME",
)


@dataclass(frozen=True)
class MapScene:
    """One scene of a map, as read from its header on the client."""

    #: what GDAL opens: a path, a URL or a VRT string (a STAC item's assets)
    dataset: str
    #: the input as the user gave it (a path, a URL, an item's id in a collection)
    name: str
    crs: Any
    transform: Any
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    #: acquisition time (UTC), and where it came from (``STAC datetime``, a tag's name)
    date: datetime | None = None
    date_source: str | None = None
    token: Any = None


def expand_inputs(
    inputs: Sequence[str], band_names: Sequence[str], resampling: str, match_names: bool = True
) -> list[MapScene]:
    """Every scene the inputs name, in the order given (globs sorted), read and checked."""
    scenes = [
        scene
        for text in inputs
        for scene in _expand(str(text), band_names, resampling, match_names, 0)
    ]
    if not scenes:
        raise SceneError(
            "no scenes given; give raster files, globs, STAC items or collections, or a manifest"
        )
    return scenes


def _expand(
    text: str, band_names: Sequence[str], resampling: str, match_names: bool, depth: int
) -> Iterator[MapScene]:
    from geoseg.paths import is_stac_item

    remote = bool(re.match(r"(/vsicurl/)?https?://", text))
    if not remote and any(ch in text for ch in "*?[") and not text.startswith("/vsi"):
        paths = sorted(glob.glob(text))
        if not paths:
            raise SceneError(
                f"no file matches {text}; check the pattern (quote it so the shell does not expand it)"
            )
        for p in paths:
            yield from _expand(p, band_names, resampling, match_names, depth)
        return
    if text.lower().endswith(MANIFEST_SUFFIXES) and not remote:
        if depth > 2:
            raise SceneError(
                f"manifest {text} is nested too deep; list scenes in it, not manifests of manifests"
            )
        base = os.path.dirname(os.path.abspath(text))
        for line in _manifest_lines(text):
            path = (
                line
                if re.match(r"[a-z0-9]+://", line) or line.startswith("/")
                else os.path.join(base, line)
            )
            yield from _expand(path, band_names, resampling, match_names, depth + 1)
        return
    if is_stac_item(text):
        doc = read_json(text)
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "FeatureCollection":
            features = doc.get("features")
            if not isinstance(features, list):
                raise SceneError(
                    f"{text} is a FeatureCollection without a list of features; give STAC items"
                )
            for i, item in enumerate(features):
                yield _stac_scene(item, text, f"{text}#{_item_id(item, i)}", band_names, resampling)
            return
        yield _stac_scene(doc, text, text, band_names, resampling)
        return
    yield _raster_scene(text)


def _manifest_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except FileNotFoundError:
        raise SceneError(f"manifest not found: {path}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"cannot read manifest {path}: {exc}") from None


def read_json(href: str) -> Any:
    """A JSON document (a STAC item or collection) from a local file or an http(s) URL."""
    url = href.replace("/vsicurl/", "", 1) if href.startswith("/vsicurl/") else href
    try:
        if re.match(r"https?://", url):
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (http(s) only)
                text = resp.read().decode("utf-8")
        else:
            with open(url, encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError:
        raise SceneError(f"STAC file not found: {href}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"cannot read STAC document {href}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SceneError(
            f"{href} is not JSON ({exc}); give a STAC item, an ItemCollection or a raster"
        ) from None


def _item_id(item: Any, index: int) -> str:
    return str(item.get("id")) if isinstance(item, dict) and item.get("id") else f"feature {index}"


def _stac_scene(
    item: Any, href: str, name: str, band_names: Sequence[str], resampling: str
) -> MapScene:
    """A STAC item's band assets as one scene (a VRT string), with the item's datetime."""
    from geoseg.raster.scenes import check_stac_item, stac_item_scene

    check_stac_item(item, name, "give STAC items")
    try:
        resolved = stac_item_scene(item, href, band_names, resampling)
    except SceneError as exc:
        text = str(exc)
        raise SceneError(text if name in text else f"{name}: {text}") from None
    props = item.get("properties") or {}
    when = props.get("datetime") or props.get("start_datetime")
    scene = _raster_scene(resolved.dataset, name)
    date = _parse_date(str(when)) if when else None
    return MapScene(
        **{**scene.__dict__, "date": date, "date_source": "STAC datetime" if date else None}
    )


def _raster_scene(path: str, name: str | None = None) -> MapScene:
    """A raster's header (open_scene's checks and one-line errors), with its acquisition tag."""
    import rasterio

    from geoseg.paths import is_virtual, is_vrt_xml
    from geoseg.raster.read import no_georef_warning, open_scene, read_env
    from geoseg.raster.scenes import file_token

    dataset = path if is_virtual(path) or is_vrt_xml(path) else os.path.abspath(path)
    label = name or path
    try:
        info = open_scene(dataset)
    except SceneError:
        if is_vrt_xml(dataset):  # open_scene's message would hold the whole VRT
            raise SceneError(
                f"STAC item {label}: its band assets cannot be read as one scene; "
                "check that they are rasters of one area"
            ) from None
        raise
    date, source = None, None
    with read_env(dataset), no_georef_warning(), rasterio.open(dataset) as src:
        tags = src.tags()
    for key in DATE_TAGS:
        if tags.get(key):
            date = _parse_date(tags[key])
            if date is not None:
                source = key
                break
    if info.crs is None or info.transform.is_identity:
        raise SceneError(
            f"scene {label} has no CRS or geotransform; a map needs georeferenced scenes"
        )
    t = info.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise SceneError(
            f"scene {label} has a rotated or flipped grid; warp it north-up first (gdalwarp)"
        )
    return MapScene(
        dataset,
        label,
        info.crs,
        info.transform,
        info.width,
        info.height,
        info.count,
        info.dtype,
        info.nodata,
        date,
        source,
        file_token(dataset),
    )


def _parse_date(text: str) -> datetime | None:
    """An ISO 8601 or TIFF (``YYYY:MM:DD HH:MM:SS``) time as UTC; None when it is neither."""
    text = text.strip()
    m = re.match(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}:\d{2}:\d{2})$", text)
    if m:
        text = f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}"
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (
        when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    )


def order_scenes(scenes: list[MapScene], order: str) -> list[MapScene]:
    """Scenes in priority order: as given, or newest first (ties keep the given order)."""
    if order == "given":
        return scenes
    if order != "newest":
        raise SceneError(f"unknown --order {order!r}; use given or newest")
    undated = [s for s in scenes if s.date is None]
    if undated:
        raise SceneError(
            f"--order newest: scene {undated[0].name} has no date (no STAC datetime, no "
            f"{' / '.join(DATE_TAGS[:2])} or TIFFTAG_DATETIME tag); tag it or use --order given"
        )
    return sorted(scenes, key=lambda s: s.date, reverse=True)  # type: ignore[arg-type,return-value]
