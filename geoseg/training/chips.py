"""Training chips from labeled rasters or vector labels, with a spatial train/val/test split.

Chips are cut inside square split blocks larger than a chip, and each block goes wholly to one
split, so no chip of one split overlaps a chip of another. Every chip is a georeferenced
GeoTIFF pair (image, label); ``chips.json`` lists them with their split and class histogram,
``index.gpkg`` holds their footprints for GIS tools, and per-band statistics (train split,
valid pixels) give the normalization a model is trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.classes import (
    IGNORE_VALUE,
    ClassInfo,
    ClassSpec,
    default_color,
    parse_value_map,  # noqa: F401 - its old home, kept for callers
)
from geoseg.errors import ChipError, ChipsLockedError, FolderLockedError, first_line
from geoseg.fs import (
    LOCK_NAME,
    atomic_path,
    check_distinct_paths,
    folder_lock,
    publish_all,
    remove_quietly,
    stage_bytes,
    temporary_sibling,
)
from geoseg.options import VECTOR_FORMATS, ChipOptions
from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import no_georef_warning, open_scene, read_env, select_bands

MANIFEST = "chips.json"
INDEX = "index.gpkg"
#: Prefix of the hidden folder a run writes its chips into before committing them.
STAGING = ".geoseg-chip-staging-"
#: Chip sizes ``chip`` chooses from, largest first, when --size is not given.
AUTO_SIZES = (256, 128, 64, 32)
#: Fewest whole chips the labelled area should hold at the chosen size.
AUTO_MIN_CHIPS = 24
#: Fewest split blocks the labelled area is cut into (so that validation gets a share).
AUTO_MIN_BLOCKS = 6
#: Widest strip of label pixels read at once when counting classes per split block.
STRIP_WIDTH = 8192
FORMAT = "geoseg-chips"
#: Label files read as vectors: what geoseg writes, and KML and GML.
VECTOR_SUFFIXES = {*VECTOR_FORMATS, ".kml", ".gml"}


@dataclass(frozen=True)
class LabelSource:
    """Labels for one image: a raster (any grid, resampled by nearest) or a vector file."""

    path: str
    kind: str
    field: str | None = None
    value_map: tuple[tuple[str, int], ...] | None = None
    background: int | None = None
    nodata_is_class: bool = False


@dataclass(frozen=True)
class ChipWindow:
    """A chip's origin, its extent inside its split block and the scene (``height`` x ``width``,
    at most the chip size; the rest is padded) and its split."""

    row: int
    col: int
    split: str
    height: int = 0
    width: int = 0


@dataclass(frozen=True)
class ChipTask:
    """One Dask task: cut a batch of chips from one image; carries paths and windows only."""

    image: str
    image_id: str
    bands: tuple[int, ...]
    label: LabelSource
    windows: tuple[ChipWindow, ...]
    size: int
    ignore_value: int
    min_labeled: float
    max_nodata: float
    out_dir: str


@dataclass
class ChipOutcome:
    """What happened to one candidate chip: kept (with its numbers) or the filter that dropped it."""

    id: str
    split: str
    dropped: str | None = None
    hist: dict[int, int] = field(default_factory=dict)
    band_sum: list[float] = field(default_factory=list)
    band_sumsq: list[float] = field(default_factory=list)
    valid: int = 0
    labeled_fraction: float = 0.0
    bounds: tuple[float, float, float, float] | None = None


def label_source(
    path: str,
    label_field: str | None,
    value_map: dict[str, int] | None,
    background: int | None = None,
    nodata_is_class: bool = False,
) -> LabelSource:
    """Classify and check a label path: raster, or vector with an existing field."""
    p = Path(path)
    if not p.exists() and not path.startswith("/vsi"):
        raise ChipError(f"labels not found: {path}; check the path")
    if p.suffix.lower() in VECTOR_SUFFIXES or p.is_dir():
        import pyogrio

        try:
            info = pyogrio.read_info(path)
        except Exception as exc:  # pyogrio raises its own DataSourceError family
            raise ChipError(f"cannot read vector labels {path}: {first_line(exc)}") from exc
        fields = [str(f) for f in info["fields"]]
        if label_field is None:
            raise ChipError(
                f"vector labels need --label-field; {p.name} has fields: {', '.join(fields)}"
            )
        if label_field not in fields:
            raise ChipError(
                f"label field {label_field!r} is not in {p.name}; its fields are: {', '.join(fields)}"
            )
        vm = tuple(sorted(value_map.items())) if value_map else None
        return LabelSource(path, "vector", label_field, vm, background)
    return LabelSource(path, "raster", nodata_is_class=nodata_is_class)


def _class_spec(spec: "ClassSpec | None") -> dict[int, tuple[str, tuple[int, int, int] | None]]:
    """Names (and optional colours) per class value, from either form the API accepts."""
    return {
        int(v): (x, None) if isinstance(x, str) else (x[0], x[1]) for v, x in (spec or {}).items()
    }


def auto_chip_size(height: int, width: int) -> int:
    """The largest of 256/128/64/32 px at which the labelled area holds ``AUTO_MIN_CHIPS`` whole
    chips (smaller scenes get smaller chips rather than none)."""
    for s in AUTO_SIZES:
        if (height // s) * (width // s) >= AUTO_MIN_CHIPS:
            return s
    return AUTO_SIZES[-1]


def auto_split_block(height: int, width: int, size: int) -> int:
    """The largest multiple of ``size`` up to 4x that cuts the area into ``AUTO_MIN_BLOCKS`` split
    blocks, so that every scene big enough for two chips has blocks for validation."""
    for k in (4, 3, 2):
        b = k * size
        if math.ceil(height / b) * math.ceil(width / b) >= AUTO_MIN_BLOCKS:
            return b
    return size


def _starts(begin: int, end: int, size: int, stride: int) -> list[int]:
    """Chip origins from ``begin`` to ``end``; the last chip may be partial (padded later), and
    one that adds no row or column beyond its predecessor is skipped."""
    out = [begin]
    for r in range(begin + stride, end, stride):
        if r + size - stride < end:
            out.append(r)
    return out


#: Seeded draws of the block split compared by :func:`choose_split` (the first is the plain
#: shuffle, kept when no later draw covers the classes better).
SPLIT_DRAWS = 256


def plan_windows(
    height: int,
    width: int,
    size: int,
    stride: int,
    block: int,
    val_fraction: float,
    test_fraction: float,
    seed: int | str,
    block_classes: dict[tuple[int, int], np.ndarray] | None = None,
    stratify: bool = True,
) -> list[ChipWindow]:
    """Chip origins inside split blocks; whole blocks go to train, val or test (seeded).

    Chips never cross a block edge: the part beyond it is padded, so no chip of one split
    overlaps another split. With the labelled pixels per class of each block
    (``block_classes``) only labelled blocks are drawn for validation and testing, stratified
    by class unless ``stratify`` is false (:func:`choose_split`); without them, at random.
    """
    if block < size:
        raise ChipError(f"--split-block {block} is smaller than --size {size}; use at least {size}")
    blocks = [(r, c) for r in range(0, height, block) for c in range(0, width, block)]
    labelled = blocks if block_classes is None else [b for b in blocks if b in block_classes]
    n = len(labelled)
    n_val = int(round(val_fraction * n))
    n_test = int(round(test_fraction * n))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    if n_val + n_test >= n and n > 1:
        n_test = max(0, min(n_test, n - 1 - n_val))
    order = choose_split(blocks, block_classes, n_val, n_test, seed, stratify)
    split_of = {b: "val" for b in order[:n_val]}
    split_of.update({b: "test" for b in order[n_val : n_val + n_test]})
    out: list[ChipWindow] = []
    for br, bc in blocks:
        r_end = min(br + block, height)
        c_end = min(bc + block, width)
        for r in _starts(br, r_end, size, stride):
            for c in _starts(bc, c_end, size, stride):
                out.append(
                    ChipWindow(
                        r,
                        c,
                        split_of.get((br, bc), "train"),
                        min(size, r_end - r),
                        min(size, c_end - c),
                    )
                )
    return out


def choose_split(
    blocks: list[tuple[int, int]],
    block_classes: dict[tuple[int, int], np.ndarray] | None,
    n_val: int,
    n_test: int,
    seed: int | str,
    stratify: bool = True,
) -> list[tuple[int, int]]:
    """Blocks in split order, validation first, then test, then train; only labelled blocks
    (keys of ``block_classes``) come before the first unlabelled one.

    The first draw is a seeded shuffle (labelled blocks first), as chip drew before it
    stratified, so ``stratify=False`` reproduces an older split. Random blocks left validation
    without a scene's rare class (no building pixel in nrcan_tiles' or SpaceNet 7's), and
    training then kept the epoch best at the other classes; so of ``SPLIT_DRAWS`` seeded draws
    the one kept first leaves every class in training, then holds the most classes in
    validation and test, then has class shares closest to the whole scene's (mean absolute
    log ratio of pixels per class against the split's share of all pixels): scikit-learn's
    StratifiedGroupKFold idea, with blocks as the groups.
    """
    rnd = random.Random(seed)
    order = blocks[:]
    rnd.shuffle(order)
    if block_classes is None:
        return order
    order.sort(key=lambda b: b not in block_classes)  # stable: labelled blocks first, shuffled
    candidates = [b for b in order if b in block_classes]
    if not stratify or not candidates or n_val + n_test == 0:
        return order
    k = max(len(block_classes[b]) for b in candidates)
    counts = np.zeros((len(candidates), k), np.float64)
    for i, b in enumerate(candidates):
        counts[i, : len(block_classes[b])] = block_classes[b]
    counts = counts[:, counts.sum(axis=0) > 0]
    total = counts.sum(axis=0)
    rows = np.arange(len(candidates))
    best: tuple[float, ...] | None = None
    best_rows = rows
    for d in range(SPLIT_DRAWS):
        if d:
            rows = np.array(rnd.sample(range(len(candidates)), len(candidates)))
        val = counts[rows[:n_val]].sum(axis=0)
        test = counts[rows[n_val : n_val + n_test]].sum(axis=0)
        train = total - val - test
        score = (
            float((train > 0).sum()),
            float((val > 0).sum() + (test > 0).sum()),
            -(_share_error(val, total) + _share_error(test, total)),
        )
        if best is None or score > best:
            best, best_rows = score, rows
    chosen = [candidates[i] for i in best_rows]
    return chosen + [b for b in order if b not in block_classes]


def _share_error(part: np.ndarray, total: np.ndarray) -> float:
    """Mean absolute log ratio of ``part``'s pixels per class to its share of all pixels (0: the
    same class mix as ``total``; an empty part counts 0)."""
    if part.sum() == 0:
        return 0.0
    expected = total * (part.sum() / total.sum())
    return float(np.mean(np.abs(np.log((part + 1.0) / (expected + 1.0)))))


def _block_classes(
    label: LabelSource, info: Any, block: int, ignore: int
) -> dict[tuple[int, int], np.ndarray] | None:
    """Labelled pixels per class value (index 0..255) of each labelled split block, from a full read of a label
    raster on the image's grid, a strip of blocks at a time; None when that cannot be known
    cheaply (vector labels, another grid)."""
    if label.kind != "raster":
        return None
    out: dict[tuple[int, int], np.ndarray] = {}
    strip = max(block, STRIP_WIDTH // block * block)
    with read_env(label.path, READ_CACHE_BYTES), rasterio.open(label.path) as src:
        if src.shape != (info.height, info.width) or src.transform != info.transform:
            return None
        for r in range(0, info.height, block):
            for c0 in range(0, info.width, strip):
                window = Window(c0, r, min(strip, info.width - c0), min(block, info.height - r))
                arr = src.read(1, window=window)
                labelled = arr != ignore
                if src.nodata is not None and not label.nodata_is_class:
                    labelled &= arr != src.nodata
                if np.issubdtype(arr.dtype, np.floating):
                    labelled &= np.isfinite(arr)
                for c in range(0, int(window.width), block):
                    part = arr[:, c : c + block][labelled[:, c : c + block]]
                    if part.size:
                        values = part.astype(np.int64).clip(0, 255)
                        out[(r, c0 + c)] = np.bincount(values)
    return out


def _read_label_window(src_label: Any, window: Window, task: ChipTask, img: Any) -> np.ndarray:
    if task.label.kind == "raster":
        arr = src_label.read(1, window=window)
        if src_label.nodata is not None and not task.label.nodata_is_class:
            arr = np.where(arr == src_label.nodata, task.ignore_value, arr)
        return arr
    return _rasterize_vector(task, img, window)


def _rasterize_vector(task: ChipTask, img: Any, window: Window) -> np.ndarray:
    import pyogrio
    import shapely
    from rasterio.features import rasterize
    from rasterio.warp import transform as warp_transform

    size = (int(window.height), int(window.width))
    wt = window_transform(window, img.transform)
    left, top = wt.c, wt.f
    right, bottom = left + wt.a * size[1], top + wt.e * size[0]
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    info = pyogrio.read_info(task.label.path)
    vcrs = info["crs"]
    bbox = transform_bounds(img.crs, vcrs, *bounds, densify_pts=21) if vcrs and img.crs else bounds
    _, _, wkb, fields = pyogrio.raw.read(task.label.path, bbox=bbox, columns=[task.label.field])
    fill = task.ignore_value if task.label.background is None else task.label.background
    out = np.full(size, fill, dtype=np.uint8)
    if wkb is None or len(wkb) == 0:
        return out
    geoms = shapely.from_wkb(wkb)
    values = fields[0]
    if task.label.value_map is not None:
        vm = dict(task.label.value_map)
        mapped = [vm.get(str(v)) for v in values]
    else:
        mapped = []
        for v in values:
            try:
                mapped.append(int(v))
            except (TypeError, ValueError):
                raise ChipError(
                    f"label field {task.label.field!r} holds {v!r}, not a class number; "
                    f"give --value-map NAME=VALUE,..."
                ) from None
    if vcrs and img.crs and rasterio.crs.CRS.from_user_input(vcrs) != img.crs:
        src_crs = rasterio.crs.CRS.from_user_input(vcrs)

        def reproject(coords: np.ndarray) -> np.ndarray:
            xs, ys = warp_transform(src_crs, img.crs, coords[:, 0], coords[:, 1])
            return np.column_stack([xs, ys])

        geoms = shapely.transform(geoms, reproject)
    shapes = []
    for g, v in zip(geoms, mapped):
        if g is None or v is None or g.is_empty:
            continue
        if not 0 <= v <= 254:
            raise ChipError(f"class value {v} out of range: classes must be 0..254")
        if not g.is_valid:
            g = shapely.make_valid(g)
        shapes.append((g, v))
    if shapes:
        rasterize(shapes, out_shape=size, transform=wt, fill=fill, out=out, dtype="uint8")
    return out


def run_chip_task(task: ChipTask) -> list[ChipOutcome]:
    """Read, filter and write the chips of one task (the worker writes the files itself)."""
    out_dir = Path(task.out_dir)
    outcomes: list[ChipOutcome] = []
    with read_env(task.image, READ_CACHE_BYTES), no_georef_warning():
        img = rasterio.open(task.image)
        lbl: Any = None
        try:
            if task.label.kind == "raster":
                lbl_src = rasterio.open(task.label.path)
                same = (
                    lbl_src.crs == img.crs
                    and lbl_src.transform == img.transform
                    and lbl_src.shape == img.shape
                )
                lbl = (
                    lbl_src
                    if same
                    else WarpedVRT(
                        lbl_src,
                        crs=img.crs,
                        transform=img.transform,
                        width=img.width,
                        height=img.height,
                        resampling=rasterio.enums.Resampling.nearest,
                        nodata=lbl_src.nodata if lbl_src.nodata is not None else task.ignore_value,
                    )
                )
                if not np.issubdtype(np.dtype(lbl_src.dtypes[0]), np.integer):
                    raise ChipError(
                        f"label raster {task.label.path} holds {lbl_src.dtypes[0]}, not class numbers"
                    )
            for w in task.windows:
                outcomes.append(_one_chip(task, img, lbl, w, out_dir))
        finally:
            if lbl is not None:
                lbl.close()
            img.close()
    return outcomes


def _one_chip(task: ChipTask, img: Any, lbl: Any, w: ChipWindow, out_dir: Path) -> ChipOutcome:
    cid = f"{task.image_id}_r{w.row:06d}_c{w.col:06d}"
    h, wd = (w.height or task.size), (w.width or task.size)
    window = Window(w.col, w.row, wd, h)
    try:
        data = img.read(list(task.bands), window=window)
        valid = img.dataset_mask(window=window) > 0
    except RasterioError as exc:
        raise ChipError(
            f"cannot read window (col {w.col}, row {w.row}) of {task.image}: {exc}"
        ) from None
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    labels = _read_label_window(lbl, window, task, img)
    bad = labels[(labels != task.ignore_value) & (labels > 254)]
    if bad.size:
        hint = (
            f"; if it means 'not labelled', pass --ignore-value {int(bad[0])}"
            if int(bad[0]) <= 255
            else "; recode the labels to 0..254"
        )
        raise ChipError(
            f"class value {int(bad[0])} out of range in {task.label.path}: classes must be 0..254{hint}"
        )
    labels = np.where(valid, labels, task.ignore_value).astype(np.uint8)
    n = h * wd
    nodata_frac = 1.0 - valid.sum() / n
    labeled = labels != task.ignore_value
    labeled_frac = float(labeled.sum() / n)
    if nodata_frac > task.max_nodata:
        return ChipOutcome(cid, w.split, dropped="--max-nodata")
    if labeled_frac < task.min_labeled or not labeled.any():
        return ChipOutcome(cid, w.split, dropped="--min-labeled")
    hist = np.bincount(labels[labeled].ravel(), minlength=1)
    vals = data[:, valid].astype(np.float64)
    if (h, wd) != (task.size, task.size):
        # a chip cut short by its split block or the scene edge: the image is mirrored, as
        # predict mirrors scene edges, and the padding carries no label
        pad = ((0, task.size - h), (0, task.size - wd))
        data = np.pad(data, ((0, 0), *pad), mode="symmetric")
        labels = np.pad(labels, pad, mode="constant", constant_values=task.ignore_value)
    transform = window_transform(window, img.transform)
    profile = {
        "driver": "GTiff",
        "width": task.size,
        "height": task.size,
        "crs": img.crs,
        "transform": transform,
        "compress": "deflate",
        "photometric": "minisblack",
    }
    _write_atomic(
        out_dir / "images" / f"{cid}.tif",
        data,
        {**profile, "count": data.shape[0], "dtype": data.dtype.name, "nodata": img.nodata},
    )
    _write_atomic(
        out_dir / "labels" / f"{cid}.tif",
        labels[None],
        {**profile, "count": 1, "dtype": "uint8", "nodata": task.ignore_value},
    )
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * wd, top + transform.e * h
    return ChipOutcome(
        cid,
        w.split,
        None,
        {int(v): int(c) for v, c in enumerate(hist) if c},
        vals.sum(axis=1).tolist(),
        (vals**2).sum(axis=1).tolist(),
        int(valid.sum()),
        labeled_frac,
        (left, bottom, right, top),
    )


def _write_atomic(path: Path, array: np.ndarray, profile: dict[str, Any]) -> None:
    with atomic_path(path, ".tif") as tmp, no_georef_warning():
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)


def image_id(path: str) -> str:
    """A chip-name prefix unique per image: its stem and a short hash of its resolved path (so
    ``./a.tif``, ``a.tif`` and a link to it are one image)."""
    real = _resolved(path)
    stem = Path(real).stem.replace(" ", "_")[:40]
    digest = hashlib.sha1(real.encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def _resolved(path: str) -> str:
    """The real path of a local file (links and ``..`` resolved); virtual paths as given."""
    return path if path.startswith("/vsi") else os.path.realpath(path)


def image_of_chip(chip_id: str) -> str:
    """The image id a chip id starts with (ids end in ``_rROW_cCOL``)."""
    return chip_id.rsplit("_r", 1)[0]


def _check_overlap(image_path: str, img_info: Any, label: LabelSource) -> tuple[int, int]:
    """Raise when the labels' footprint misses the image; else the height and width (pixels)
    of the part of the image the labels cover."""
    import pyogrio

    if img_info.crs is None:
        return img_info.height, img_info.width
    if label.kind == "raster":
        with rasterio.open(label.path) as src:
            if src.crs is None:
                raise ChipError(f"label raster {label.path} has no CRS; georeference it first")
            lb = transform_bounds(src.crs, img_info.crs, *src.bounds, densify_pts=21)
    else:
        info = pyogrio.read_info(label.path, force_total_bounds=True)
        if info["crs"] is None:
            raise ChipError(f"vector labels {label.path} have no CRS; set one (ogr2ogr -a_srs)")
        lb = transform_bounds(info["crs"], img_info.crs, *info["total_bounds"], densify_pts=21)
    t = img_info.transform
    ib = (t.c, t.f + t.e * img_info.height, t.c + t.a * img_info.width, t.f)
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        raise ChipError(
            f"labels {Path(label.path).name} do not overlap image {Path(image_path).name}; "
            "check that both cover the same place and carry the right CRS"
        )
    w = (min(lb[2], ib[2]) - max(lb[0], ib[0])) / abs(t.a)
    h = (min(lb[3], ib[3]) - max(lb[1], ib[1])) / abs(t.e)
    return max(1, min(img_info.height, int(h))), max(1, min(img_info.width, int(w)))


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


def make_chips(
    pairs: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    options: ChipOptions | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    **keywords: Any,
) -> ChipsSummary:
    """Cut (image, labels) pairs into chips in ``out_dir``; a folder that exists grows.

    ``options`` (:class:`geoseg.options.ChipOptions`), with any of its fields given as
    ``keywords`` replacing its own (``make_chips(pairs, out, size=32)``). ``size`` and
    ``split_block`` default to values that fit the first scene's labelled area. Re-chipping an
    image already in the folder replaces its chips and statistics. The run is all or nothing:
    chips are written into a hidden staging folder and moved in at the end, so a failed or
    interrupted run leaves the folder exactly as it was. ``stratify=False`` draws validation and
    test blocks at random (:func:`choose_split`), as chip did before.
    """
    opts = ChipOptions.from_keywords(options, **keywords)
    if not pairs:
        raise ChipError("give at least one IMAGE LABELS pair")
    ignore = IGNORE_VALUE if opts.ignore_value is None else int(opts.ignore_value)
    out = Path(out_dir)
    check_distinct_paths(
        {
            f"{kind} of pair {i + 1}": path
            for i, pair in enumerate(pairs)
            for kind, path in zip(("image", "labels"), pair)
        },
        {"chips manifest": out / MANIFEST, "chips index": out / INDEX},
        {"the chips image folder": out / "images", "the chips label folder": out / "labels"},
    )
    if out.exists() and not out.is_dir():
        raise ChipError(f"chips folder {out} is a file; give a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            try:  # one chip run per folder, and none while a batch job or predict writes there
                stack.enter_context(
                    folder_lock(out, exclusive=True, what="chip run", holder="geoseg chip")
                )
            except FolderLockedError as exc:
                raise ChipsLockedError(str(exc)) from None
            return _make_chips_locked(pairs, out, opts, ignore, workers, scheduler, client)
    except BaseException:
        if created:
            remove_quietly(out / LOCK_NAME)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _make_chips_locked(
    pairs: Sequence[tuple[str, str]],
    out: Path,
    opts: ChipOptions,
    ignore: int,
    workers: int | None,
    scheduler: str | None,
    client: Any,
) -> ChipsSummary:
    """``make_chips`` while holding the folder's lock."""
    size, class_names, min_labeled, max_nodata = (
        opts.size,
        opts.class_spec,
        opts.min_labeled,
        opts.max_nodata,
    )
    existing = load_manifest(out) if (out / MANIFEST).exists() else None
    for stale in out.glob(f"{STAGING}*"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    for name in (MANIFEST, INDEX):
        remove_quietly(*out.glob(f".{name}.*.part*"))
    if existing is not None and size is None:
        size = int(existing["size"])
    scenes = []
    band_names: list[str] | None = None
    dtype = None
    for image, labels in pairs:
        info = open_scene(image)
        band_list = select_bands(opts.bands, info.count)
        names = [info.descriptions[b - 1] or f"band{b}" for b in band_list]
        if band_names is None:
            band_names, dtype = names, info.dtype
        elif len(names) != len(band_names):
            raise ChipError(f"{image} gives {len(names)} bands, the first image {len(band_names)}")
        src = label_source(
            labels,
            opts.label_field,
            opts.value_mapping,
            opts.background,
            opts.label_nodata_is_class,
        )
        area = _check_overlap(image, info, src)
        if size is None:
            size = auto_chip_size(*area)
        scenes.append((image, info, band_list, src, area))
    assert band_names is not None and size is not None
    stride = opts.stride or size
    tasks: list[ChipTask] = []
    run_ids: set[str] = set()
    for image, info, band_list, src, area in scenes:
        block = opts.split_block or auto_split_block(*area, size)
        classes = _block_classes(src, info, block, ignore)
        iid = image_id(image)
        # seeded by the image's file name, not its position or folder: an image re-chipped alone,
        # or a copy of it elsewhere, gets the same split
        windows = plan_windows(
            info.height,
            info.width,
            size,
            stride,
            block,
            opts.val_fraction,
            opts.test_fraction,
            f"{opts.seed}-{Path(_resolved(image)).name}",
            classes,
            opts.stratify,
        )
        if iid in run_ids:
            raise ChipError(f"{image} is given twice; give each image once")
        run_ids.add(iid)
        for j in range(0, len(windows), 16):
            tasks.append(
                ChipTask(
                    image,
                    iid,
                    tuple(band_list),
                    src,
                    tuple(windows[j : j + 16]),
                    size,
                    ignore,
                    min_labeled,
                    max_nodata,
                    "",
                )
            )
    if existing is not None:
        _check_compatible(out, existing, band_names, size, ignore, class_names)
        redone = {image_of_chip(c["id"]) for c in existing["chips"]} & run_ids
        old = [c for c in existing["chips"] if image_of_chip(c["id"]) in redone]
        if any("band_sum" not in c for c in old):
            raise ChipError(
                f"chips folder {out} was made by an older geoseg and already holds chips of these "
                "images; chip them into a new folder"
            )

    stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    try:
        (stage / "images").mkdir()
        (stage / "labels").mkdir()
        tasks = [ChipTask(**{**t.__dict__, "out_dir": str(stage)}) for t in tasks]
        outcomes = _run_tasks(tasks, client, scheduler, workers)
        kept = [o for o in outcomes if o.dropped is None]
        dropped: dict[str, int] = {}
        for o in outcomes:
            if o.dropped:
                dropped[o.dropped] = dropped.get(o.dropped, 0) + 1
        if not kept and existing is None:
            if min_labeled <= 0 and max_nodata >= 1:
                raise ChipError(
                    f"no labelled pixel in the labels (every pixel is nodata or the ignore value {ignore}); "
                    "check the labels and --ignore-value"
                )
            worst = max(dropped, key=dropped.get) if dropped else "none"  # type: ignore[arg-type]
            raise ChipError(
                f"no chip survived the filters ({', '.join(f'{k} removed {v}' for k, v in dropped.items())}); "
                f"relax {worst}" + (" or check --ignore-value" if worst == "--min-labeled" else "")
            )
        return _commit(
            out,
            stage,
            existing,
            run_ids,
            kept,
            dropped,
            band_names,
            str(dtype),
            size,
            ignore,
            _class_spec(class_names),
            opts.oversample_rare,
            [p[0] for p in pairs],
        )
    finally:
        _remove_stage(stage)


def _remove_stage(stage: Path, tries: int = 50) -> None:
    """Remove the staging folder, again while it is still there: after a failure, chip tasks
    already running on workers are not stopped by cancelling them and may still be writing a
    chip into it. They never create folders, so once it is gone nothing can reappear."""
    import time

    for _ in range(tries):
        shutil.rmtree(stage, ignore_errors=True)
        if not stage.exists():
            return
        time.sleep(0.1)


def _run_tasks(
    tasks: list[ChipTask], client: Any, scheduler: str | None, workers: int | None
) -> list[ChipOutcome]:
    """Run the chip tasks (bounded, in Dask); outcomes in task order, as planned. Work still
    pending when one task fails is cancelled."""
    from geoseg.dask.session import dask_session
    from geoseg.dask.stream import stream

    by_task: dict[int, list[ChipOutcome]] = {}
    with dask_session(client, scheduler, workers, processes=False) as session:
        limit = max(2, 2 * session.threads)
        for i, batch in stream(session.client, run_chip_task, tasks, limit, retries=0):
            by_task[i] = batch
    return [o for i in sorted(by_task) for o in by_task[i]]


def _check_compatible(
    out: Path,
    existing: dict[str, Any],
    band_names: list[str],
    size: int,
    ignore: int,
    class_names: "ClassSpec | None",
) -> None:
    """Refuse to add chips that do not fit a folder's bands, size, ignore value or class names."""
    if len(existing["bands"]) != len(band_names) or existing["size"] != size:
        raise ChipError(
            f"chips folder {out} was made for {len(existing['bands'])} bands "
            f"({','.join(existing['bands'])}) and size {existing['size']}; these images give "
            f"{len(band_names)} bands and size {size}: use another folder"
        )
    if existing["ignore_value"] != ignore:
        raise ChipError(
            f"chips folder {out} uses ignore value {existing['ignore_value']}, not {ignore}"
        )
    named = {
        int(c["value"]): c["name"]
        for c in existing["classes"]
        if not c["name"].startswith("class ")
    }
    clash = {
        v: (named[v], n)
        for v, (n, _) in _class_spec(class_names).items()
        if v in named and named[v] != n
    }
    if clash:
        v, (old, new) = next(iter(clash.items()))
        raise ChipError(
            f"chips folder {out} was made for other classes: value {v} is {old!r} there, "
            f"{new!r} here; use another folder or the same --classes"
        )


def _commit(
    out: Path,
    stage: Path,
    existing: dict[str, Any] | None,
    run_ids: set[str],
    kept: list[ChipOutcome],
    dropped: dict[str, int],
    band_names: list[str],
    dtype: str,
    size: int,
    ignore: int,
    class_names: dict[int, tuple[str, tuple[int, int, int] | None]],
    oversample_rare: float,
    images: list[str],
) -> ChipsSummary:
    """Move the staged chips in, replacing the chips of re-chipped images, and write the manifest
    last; on any failure, undo the moves so the folder is as it was."""
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    backup = stage / "previous"
    (backup / "images").mkdir(parents=True)
    (backup / "labels").mkdir()
    old_chips = existing["chips"] if existing is not None else []
    replaced = [c["id"] for c in old_chips if image_of_chip(c["id"]) in run_ids]
    saved: list[tuple[Path, Path]] = []
    moved: list[Path] = []
    try:
        for cid in replaced:
            for kind in ("images", "labels"):
                src = out / kind / f"{cid}.tif"
                if src.exists():
                    os.replace(src, backup / kind / src.name)
                    saved.append((backup / kind / src.name, src))
        for o in kept:
            for kind in ("images", "labels"):
                dst = out / kind / f"{o.id}.tif"
                os.replace(stage / kind / f"{o.id}.tif", dst)
                moved.append(dst)
        return _update_manifest(
            out,
            existing,
            set(replaced),
            kept,
            dropped,
            band_names,
            dtype,
            size,
            ignore,
            class_names,
            oversample_rare,
            images,
        )
    except BaseException:
        remove_quietly(*moved)
        for a, b in saved:
            os.replace(a, b)
        raise


def _update_manifest(
    out: Path,
    existing: dict[str, Any] | None,
    replaced: set[str],
    kept: list[ChipOutcome],
    dropped: dict[str, int],
    band_names: list[str],
    dtype: str,
    size: int,
    ignore: int,
    class_names: dict[int, tuple[str, tuple[int, int, int] | None]],
    oversample_rare: float,
    images: list[str],
) -> ChipsSummary:
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
    manifest["images"] = sorted(set(manifest["images"]) | {_resolved(i) for i in images})
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
    return ChipsSummary(out, added, dropped, class_pixels, len(manifest["chips"]))


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
