"""The STAC item describing one scene's outputs."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geoseg.version import __version__


def stac_item(
    scene: str,
    outs: dict[str, Path],
    model_name: str,
    model_sha: str,
    classes: list[Any],
    source_item: str | None = None,
) -> dict[str, Any]:
    """A STAC 1.0 Item for one scene's outputs, with the class raster and polygons as assets, and
    a ``derived_from`` link to the scene's own STAC item when it was given as one."""
    import rasterio
    from rasterio.warp import transform_bounds, transform_geom

    with rasterio.open(outs["classes"]) as src:
        bounds, crs, shape, transform = src.bounds, src.crs, src.shape, src.transform
    if crs is not None:
        wgs = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
        geom = transform_geom(
            crs,
            "EPSG:4326",
            {
                "type": "Polygon",
                "coordinates": [
                    [
                        (bounds.left, bounds.bottom),
                        (bounds.right, bounds.bottom),
                        (bounds.right, bounds.top),
                        (bounds.left, bounds.top),
                        (bounds.left, bounds.bottom),
                    ]
                ],
            },
        )
    else:
        wgs, geom = None, None
    stamp = scene_time(scene)
    assets: dict[str, Any] = {
        "classes": {
            "href": _href(outs["classes"], outs),
            "type": media_type(outs["classes"]),
            "roles": ["data"],
            "title": "class raster",
            "classification:classes": [
                {"value": c.value, "name": c.name, "color_hint": "%02X%02X%02X" % tuple(c.color)}
                for c in classes
            ],
        }
    }
    if "confidence" in outs:
        assets["confidence"] = {
            "href": _href(outs["confidence"], outs),
            "roles": ["data"],
            "type": media_type(outs["confidence"]),
            "title": "probability of the winning class (1-255; 0 nodata)",
        }
    if "probabilities" in outs:
        assets["probabilities"] = {
            "href": _href(outs["probabilities"], outs),
            "roles": ["data"],
            "type": media_type(outs["probabilities"]),
            "title": "class probabilities (0-255)",
        }
    if "vector" in outs:
        assets["polygons"] = {
            "href": outs["vector"].name,
            "roles": ["data"],
            "title": "class polygons",
        }
    props: dict[str, Any] = {
        "datetime": stamp,
        "geoseg:model": model_name,
        "geoseg:model_sha256": model_sha,
        "geoseg:version": __version__,
        "geoseg:source": scene,
    }
    if crs is not None:
        props.update(
            {
                "proj:wkt2": crs.to_wkt(),
                "proj:shape": list(shape),
                "proj:transform": list(transform)[:6],
            }
        )
        if crs.to_epsg():
            props["proj:epsg"] = crs.to_epsg()
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
        ],
        "id": outs["classes"].stem,
        "geometry": geom,
        "bbox": list(wgs) if wgs else None,
        "properties": props,
        "assets": assets,
        "links": [
            {
                "rel": "derived_from",
                "href": source_item,
                "type": "application/geo+json",
                "title": "source scene",
            }
        ]
        if source_item
        else [],
    }


def _href(path: Path, outs: dict[str, Path]) -> str:
    """An output's path relative to the STAC item (a mosaic inside a folder of cells too)."""
    return os.path.relpath(path, outs["stac"].parent)


def media_type(path: Path) -> str:
    """The media type of a raster output: a COG, or a cells folder's VRT mosaic."""
    return (
        "application/xml"
        if path.suffix == ".vrt"
        else "image/tiff; application=geotiff; profile=cloud-optimized"
    )


def scene_time(scene: str) -> str:
    """The scene file's modification time, ISO 8601 UTC: stable across reruns."""
    try:
        mtime_ns = os.stat(scene).st_mtime_ns
    except OSError:
        mtime_ns = 0
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
