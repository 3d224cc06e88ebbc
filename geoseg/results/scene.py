"""What a batch job adds to each scene it predicts: class areas (whole raster, and per zone
with the job's ``stats:``), a quicklook PNG, and class counts in the scene's STAC item.
Batch calls these in a few lines; map jobs (not built yet) will call the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoseg.results.stats import STATS_FORMATS

#: Keys of the job file's ``stats:`` section and their types.
STATS_SCHEMA: dict[str, Any] = {"zones": str, "zone_field": str, "format": str}


def check_stats_section(section: Any, base: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The job's ``stats:`` section with ``zones`` resolved against the job file's folder, and
    its problems (zones missing, without CRS or without the field, an unknown format), found
    before any scene runs. ``stats: {}`` counts classes without zones."""
    from geoseg.errors import ResultsError
    from geoseg.results.zones import read_zones

    if section is None or not isinstance(section, dict):
        return None, []
    out = dict(section)
    problems: list[str] = []
    fmt = str(out.get("format", "csv"))
    if f".{fmt}" not in STATS_FORMATS:
        problems.append(
            f"stats.format: {fmt!r} is not one of {', '.join(f[1:] for f in STATS_FORMATS)}"
        )
    if fmt == "gpkg" and not out.get("zones"):
        problems.append("stats.format: gpkg holds zones; give stats.zones, or use csv or parquet")
    if out.get("zones"):
        out["zones"] = (
            str((base / str(out["zones"])).resolve())
            if "://" not in str(out["zones"])
            else out["zones"]
        )
        try:
            read_zones(out["zones"], out.get("zone_field"))
        except ResultsError as exc:
            problems.append(f"stats.zones: {exc}")
    out["format"] = fmt
    return out, problems


def scene_outputs(classes: Path, stats: dict[str, Any] | None, quicklook: bool) -> dict[str, Path]:
    """The extra outputs of one scene: ``stats`` table and ``quicklook`` PNG, beside its classes."""
    base = classes.name[: -len(".tif")] if classes.name.endswith(".tif") else classes.stem
    out: dict[str, Path] = {}
    if stats is not None:
        out["stats"] = classes.with_name(f"{base}.stats.{stats.get('format', 'csv')}")
    if quicklook:
        out["quicklook"] = classes.with_name(base + ".png")
    return out


def scene_results(
    outs: dict[str, Path], stats: dict[str, Any] | None, client: Any, max_in_flight: Any = None
) -> dict[int, dict[str, Any]]:
    """Count the scene's class raster on the job's cluster, write its stats table and quicklook
    (as ``outs`` asks), and return its class areas (:meth:`StatsResult.totals`)."""
    from geoseg.results.quicklook import quicklook
    from geoseg.results.stats import stats as count

    classes = outs["classes"]
    whole = count(
        classes,
        outs["stats"] if stats is not None and not stats.get("zones") else None,
        overwrite=True,
        client=client,
        max_in_flight=max_in_flight,
    )
    if stats is not None and stats.get("zones"):
        count(
            classes,
            outs["stats"],
            zones=stats["zones"],
            zone_field=stats.get("zone_field"),
            overwrite=True,
            client=client,
            max_in_flight=max_in_flight,
        )
    areas = whole.totals()
    if "quicklook" in outs:
        quicklook(classes, outs["quicklook"], areas, overwrite=True)
    return areas


def add_class_counts(
    item: dict[str, Any], areas: dict[int, dict[str, Any]], thumbnail: Path | None = None
) -> dict[str, Any]:
    """Each class of a STAC item's ``classes`` asset gains its ``count`` and ``percentage``
    (classification extension) and ``geoseg:area_m2``; the quicklook becomes its thumbnail."""
    valid = sum(a["pixels"] for a in areas.values()) or 1
    for c in item.get("assets", {}).get("classes", {}).get("classification:classes", []):
        a = areas.get(int(c["value"]), {"pixels": 0, "area_m2": 0.0})
        c["count"] = int(a["pixels"])
        c["percentage"] = round(100.0 * a["pixels"] / valid, 6)
        c["geoseg:area_m2"] = float(a["area_m2"])
    if thumbnail is not None:
        item.setdefault("assets", {})["thumbnail"] = {
            "href": thumbnail.name,
            "type": "image/png",
            "roles": ["thumbnail"],
            "title": "quicklook",
        }
    return item


def json_areas(areas: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Class areas keyed by the value as text, as JSON stores them (the job report)."""
    return {str(v): dict(a) for v, a in sorted(areas.items())}
