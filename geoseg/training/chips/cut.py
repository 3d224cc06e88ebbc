"""Cutting chips (a Dask task per image and run of windows): read, rasterize vector labels, filter,
write each georeferenced image and label pair."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.errors import ChipError
from geoseg.fs import (
    atomic_path,
)
from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import no_georef_warning, read_env
from geoseg.training.chips.plan import ChipWindow, LabelSource


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
