"""The chips folder's manifest (chips.json) and index (index.gpkg): chip ids, splits, class
histograms, band statistics and sampling weights."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from geoseg.classes import (
    ClassInfo,
    default_color,
)
from geoseg.errors import ChipError
from geoseg.fs import (
    publish_all,
    remove_quietly,
    stage_bytes,
    temporary_sibling,
)
from geoseg.training.chips.cut import ChipOutcome

MANIFEST = "chips.json"


INDEX = "index.gpkg"


FORMAT = "geoseg-chips"


def image_id(path: str) -> str:
    """A chip-name prefix unique per image: its stem and a short hash of its resolved path (so
    ``./a.tif``, ``a.tif`` and a link to it are one image)."""
    real = resolved_path(path)
    stem = Path(real).stem.replace(" ", "_")[:40]
    digest = hashlib.sha1(real.encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def resolved_path(path: str) -> str:
    """The real path of a local file (links and ``..`` resolved); virtual paths as given."""
    return path if path.startswith("/vsi") else os.path.realpath(path)


def image_of_chip(chip_id: str) -> str:
    """The image id a chip id starts with (ids end in ``_rROW_cCOL``)."""
    return chip_id.rsplit("_r", 1)[0]


@dataclass
class ChipsSummary:
    """What a chip run produced, for reporting."""

    out_dir: Path
    added: dict[str, int]
    dropped: dict[str, int]
    class_pixels: dict[str, dict[int, int]]
    total_chips: int

    def table(self, classes: Sequence[ClassInfo]) -> str:
        names = {c.value: c.name for c in classes}
        splits = [s for s in ("train", "val", "test") if s in self.class_pixels]
        lines = [
            "chips added: "
            + ", ".join(f"{s} {self.added.get(s, 0)}" for s in ("train", "val", "test"))
        ]
        if self.dropped:
            lines.append(
                "dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
            )
        lines.append(f"{'class':<20}" + "".join(f"{s:>12}" for s in splits))
        for v in sorted({v for s in splits for v in self.class_pixels[s]}):
            label = f"{v} {names.get(v, '')}"
            lines.append(
                f"{label:<20}" + "".join(f"{self.class_pixels[s].get(v, 0):>12}" for s in splits)
            )
        return "\n".join(lines)


def load_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``chips.json``, with a clear error when the folder is empty or damaged."""
    path = Path(out_dir) / MANIFEST
    if not Path(out_dir).is_dir():
        raise ChipError(f"chips folder {out_dir} does not exist; run 'geoseg chip' first")
    if not path.exists():
        raise ChipError(
            f"{out_dir} is not a chips folder (no {MANIFEST}); run 'geoseg chip' into it"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChipError(
            f"{path} is damaged ({exc}); re-run 'geoseg chip' into a new folder"
        ) from exc
    if manifest.get("format") != FORMAT:
        raise ChipError(f"{path} is not a geoseg chips manifest")
    return manifest


def manifest_classes(manifest: dict[str, Any]) -> list[ClassInfo]:
    return [
        ClassInfo(int(c["value"]), str(c["name"]), tuple(c["color"])) for c in manifest["classes"]
    ]


@dataclass(frozen=True)
class ChipRun:
    """What one chip run adds to a folder's manifest: its chips, and the facts they share."""

    #: the chips kept, and how many each filter dropped
    kept: list[ChipOutcome]
    dropped: dict[str, int]
    band_names: list[str]
    dtype: str
    size: int
    ignore: int
    #: class value -> (name, colour or None), as given by the user
    class_names: dict[int, tuple[str, tuple[int, int, int] | None]]
    oversample_rare: float
    #: the images chipped (their paths as given)
    images: list[str]


def update_manifest(
    out: Path,
    existing: dict[str, Any] | None,
    replaced: set[str],
    run: ChipRun,
) -> ChipsSummary:
    """Write the manifest and index of ``out`` with the ``kept`` chips added and the ``replaced``
    ones (ids) gone: statistics, classes and weights summed again; both published at once."""
    kept, band_names, dtype, size, ignore = (
        run.kept,
        run.band_names,
        run.dtype,
        run.size,
        run.ignore,
    )
    class_names, oversample_rare, images = run.class_names, run.oversample_rare, run.images
    manifest = existing or {
        "format": FORMAT,
        "version": 1,
        "bands": band_names,
        "dtype": dtype,
        "size": size,
        "ignore_value": ignore,
        "classes": [],
        "chips": [],
        "images": [],
        "stats": {
            "band_sum": [0.0] * len(band_names),
            "band_sumsq": [0.0] * len(band_names),
            "band_count": 0,
        },
    }
    manifest["chips"] = [c for c in manifest["chips"] if c["id"] not in replaced]
    stats = manifest["stats"]
    for o in kept:
        if o.split == "train" and not replaced:  # folders from older versions lack per-chip sums
            stats["band_sum"] = [a + b for a, b in zip(stats["band_sum"], o.band_sum)]
            stats["band_sumsq"] = [a + b for a, b in zip(stats["band_sumsq"], o.band_sumsq)]
            stats["band_count"] += o.valid
        manifest["chips"].append(
            {
                "id": o.id,
                "split": o.split,
                "hist": {str(k): v for k, v in o.hist.items()},
                "labeled_fraction": round(o.labeled_fraction, 4),
                "bounds": o.bounds,
                "weight": 1.0,
                "band_sum": o.band_sum,
                "band_sumsq": o.band_sumsq,
                "valid": o.valid,
            }
        )
    if replaced:  # re-chipped images: the statistics are summed again from every chip
        train = [c for c in manifest["chips"] if c["split"] == "train"]
        stats["band_sum"] = [
            float(sum(c["band_sum"][b] for c in train)) for b in range(len(band_names))
        ]
        stats["band_sumsq"] = [
            float(sum(c["band_sumsq"][b] for c in train)) for b in range(len(band_names))
        ]
        stats["band_count"] = int(sum(c["valid"] for c in train))
    manifest["images"] = sorted(set(manifest["images"]) | {resolved_path(i) for i in images})
    n = max(stats["band_count"], 1)
    mean = [s / n for s in stats["band_sum"]]
    std = [
        max(float(np.sqrt(max(q / n - m * m, 0.0))), 1e-6)
        for q, m in zip(stats["band_sumsq"], mean)
    ]
    stats["mean"], stats["std"] = mean, std
    # classes: every value seen, named by the user where given, colours kept stable
    by_value = {int(c["value"]): c for c in manifest["classes"]}
    seen = {int(v) for c in manifest["chips"] for v in c["hist"]}
    for v in sorted(seen | set(class_names)):
        if v == ignore:
            continue
        entry = by_value.setdefault(
            v, {"value": v, "name": f"class {v}", "color": list(default_color(v))}
        )
        if v in class_names:
            name, colour = class_names[v]
            entry["name"] = name
            if colour is not None:
                entry["color"] = list(colour)
    manifest["classes"] = [by_value[v] for v in sorted(by_value)]
    class_pixels: dict[str, dict[int, int]] = {}
    for c in manifest["chips"]:
        d = class_pixels.setdefault(c["split"], {})
        for v, cnt in c["hist"].items():
            d[int(v)] = d.get(int(v), 0) + int(cnt)
    stats["class_pixels"] = {s: {str(k): v for k, v in d.items()} for s, d in class_pixels.items()}
    _set_weights(manifest, class_pixels.get("train", {}), oversample_rare)
    tmp = stage_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode(), ".part.json")
    index: Path | None = None
    try:
        index = _write_index(out, manifest)
        publish_all([(tmp, out / MANIFEST)] + ([(index, out / INDEX)] if index is not None else []))
    except BaseException:
        remove_quietly(tmp, index)
        raise
    added: dict[str, int] = {}
    for o in kept:
        added[o.split] = added.get(o.split, 0) + 1
    return ChipsSummary(out, added, run.dropped, class_pixels, len(manifest["chips"]))


def _set_weights(manifest: dict[str, Any], train_pixels: dict[int, int], factor: float) -> None:
    """Sampling weight per chip: 1, plus ``factor`` for chips holding a rare class (< half the
    share an even split would give) on at least 1% of their pixels."""
    total = sum(train_pixels.values())
    k = max(len(train_pixels), 1)
    rare = {v for v, c in train_pixels.items() if total and c / total < 0.5 / k}
    size2 = manifest["size"] ** 2
    for c in manifest["chips"]:
        has_rare = any(int(v) in rare and cnt >= 0.01 * size2 for v, cnt in c["hist"].items())
        c["weight"] = 1.0 + (factor if has_rare and factor > 0 else 0.0)


def _write_index(out: Path, manifest: dict[str, Any]) -> Path | None:
    """Chip footprints (EPSG:4326) with split and class histogram, for QGIS, into a temporary
    file the caller moves into place; None when there is no chip."""
    import pyogrio
    import shapely

    if not manifest["chips"]:
        remove_quietly(out / INDEX)
        return None
    crs = None
    geoms, ids, splits, hists, fracs = [], [], [], [], []
    for c in manifest["chips"]:
        if c["bounds"] is None:
            continue
        crs_img = _chip_crs(out, c["id"])
        b = c["bounds"]
        if crs_img is not None:
            b = transform_bounds(crs_img, "EPSG:4326", *b, densify_pts=11)
            crs = "EPSG:4326"
        geoms.append(shapely.box(*b))
        ids.append(c["id"])
        splits.append(c["split"])
        hists.append(json.dumps(c["hist"]))
        fracs.append(float(c["labeled_fraction"]))
    tmp = temporary_sibling(out / INDEX, ".gpkg")
    remove_quietly(
        tmp
    )  # an unguessable name, created exclusively; the GPKG driver wants no file there
    pyogrio.raw.write(
        str(tmp),
        np.array(shapely.to_wkb(geoms), dtype=object),
        [
            np.array(ids, dtype=object),
            np.array(splits, dtype=object),
            np.array(hists, dtype=object),
            np.array(fracs),
        ],
        ["id", "split", "class_histogram", "labeled_fraction"],
        crs=crs,
        geometry_type="Polygon",
        driver="GPKG",
        layer="chips",
    )
    return tmp


_CRS_CACHE: dict[str, Any] = {}


def _chip_crs(out: Path, cid: str) -> Any:
    prefix = image_of_chip(cid)
    if prefix not in _CRS_CACHE:
        with rasterio.open(out / "labels" / f"{cid}.tif") as src:
            _CRS_CACHE[prefix] = src.crs
    return _CRS_CACHE[prefix]


def iter_chips(manifest: dict[str, Any], split: str) -> Iterable[dict[str, Any]]:
    return (c for c in manifest["chips"] if c["split"] == split)
