"""What a scene string is, without opening it: a local file, a GDAL virtual path or URL, a VRT
given as XML, a STAC item, or a map cell's mosaic spec. No geoseg imports (like rasterio's
``_path``), so every layer can ask."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from typing import Any

#: Path parts that mark a scene read over the network (GDAL's network file systems, URLs).
_REMOTE_MARKS = (
    "://",
    "/vsicurl",
    "/vsis3",
    "/vsigs",
    "/vsiaz",
    "/vsiadls",
    "/vsioss",
    "/vsiswift",
    "/vsihdfs",
    "/vsiwebhdfs",
)


def is_remote(path: str) -> bool:
    """True for scenes GDAL reads over the network (URLs, ``/vsicurl/``, cloud buckets), also
    inside a ``/vsizip/`` chain or a VRT's XML."""
    return any(mark in path for mark in _REMOTE_MARKS)


def is_virtual(path: str) -> bool:
    """True for GDAL virtual paths, URLs and VRT XML strings, which os.path cannot check."""
    return path.startswith("/vsi") or "://" in path or is_vrt_xml(path)


def is_vrt_xml(text: str) -> bool:
    """True for a VRT given as XML text (what band-file and STAC scenes become)."""
    return text.lstrip().startswith("<VRTDataset")


def vrt_sources(xml: str) -> list[str]:
    """The source files of a VRT XML string, in band order."""
    return [_unescape(m) for m in re.findall(r"<SourceFilename[^>]*>(.*?)</SourceFilename>", xml)]


def _unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )


def describe(dataset: str) -> str:
    """A short name for messages: the path, or the band files a VRT string reads."""
    if dataset.startswith("geoseg-mosaic:"):
        return describe_mosaic(dataset)
    if not is_vrt_xml(dataset):
        return dataset
    files = [os.path.basename(s) or s for s in vrt_sources(dataset)]
    return "band files " + ", ".join(files)


def is_stac_item(path: str) -> bool:
    """True for what looks like a STAC item: a ``.json`` file or URL, or an http(s) URL without a
    file extension (a STAC API's ``.../collections/C/items/ID``)."""
    if re.match(r"(/vsicurl/)?https?://", path):
        url_path = urllib.parse.urlparse(path.replace("/vsicurl/", "", 1)).path
        name = url_path.rstrip("/").rsplit("/", 1)[-1]
        return url_path.lower().endswith((".json", ".geojson")) or "." not in name
    return path.lower().endswith((".json", ".geojson"))


#: What a map cell's scene string starts with.
MOSAIC_PREFIX = "geoseg-mosaic:"


def is_mosaic_spec(scene: str) -> bool:
    """True for a map cell's scene string (see :func:`mosaic_spec`)."""
    return scene.startswith(MOSAIC_PREFIX)


def describe_mosaic(scene: str) -> str:
    """A short name for messages: the scenes a cell reads."""
    try:
        names = [
            os.path.basename(s["name"].rstrip("/")) or s["name"]
            for s in json.loads(scene[len(MOSAIC_PREFIX) :])["scenes"]
        ]
    except (ValueError, KeyError, TypeError):
        return "a map cell"
    if not names:
        return "a map cell without scenes"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"the map's scenes {shown}"


def mosaic_tokens(scene: str) -> list[Any]:
    """The file tokens a cell's scene string records (part of task keys and resume tokens)."""
    return [s.get("token") for s in json.loads(scene[len(MOSAIC_PREFIX) :])["scenes"]]
