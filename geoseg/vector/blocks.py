"""Polygonizing one block of a class raster (a Dask task): connected components per class, each
polygonized in global pixel coordinates, with what touches the block's borders kept for merging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import no_georef_warning, read_env
from geoseg.vector.geometry import Measurer, apply_transform

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class BlockTask:
    """One block of the class raster, with the halo a sieve needs; paths and windows only."""

    raster: str
    block_row: int
    block_col: int
    row_off: int
    col_off: int
    height: int
    width: int
    connectivity: int
    skip: tuple[int, ...]
    sieve_pixels: int
    halo: int
    probabilities: str | None
    prob_band: tuple[tuple[int, int], ...]
    transform: tuple[float, ...] | None = None
    crs_wkt: str | None = None
    segmentize: bool = False


@dataclass
class Finished:
    """Regions completed inside one block, already in CRS coordinates and measured (columns)."""

    wkb: list[bytes]
    classes: np.ndarray
    area: np.ndarray
    perimeter: np.ndarray
    pixels: np.ndarray
    prob_sum: np.ndarray | None


@dataclass
class BlockResult:
    """Components of one block: the regions it finished, and the parts touching its border
    (class, pixel count, probability sum, polygon in pixel coordinates) with border ids."""

    block_row: int
    block_col: int
    classes: np.ndarray
    pixels: np.ndarray
    prob_sum: np.ndarray | None
    geoms: dict[int, bytes]
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray
    finished: Finished | None = None


def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def read_valid_classes(
    src: Any, window: Window, skip: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Class values and the mask of pixels that become polygons (not nodata, not skipped)."""
    data = src.read(1, window=window)
    valid = src.read_masks(1, window=window) > 0
    if skip:
        valid &= ~np.isin(data, np.asarray(skip))
    return data, valid


def label_components(
    data: np.ndarray, valid: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of equal class: label image (0 = none) and class per label."""
    from scipy import ndimage

    labels = np.zeros(data.shape, dtype=np.int32)
    classes = [0]
    structure = _structure(connectivity)
    n = 0
    for v in np.unique(data[valid]):
        lab, k = ndimage.label((data == v) & valid, structure=structure)
        hit = lab > 0
        labels[hit] = lab[hit] + n
        classes.extend([int(v)] * k)
        n += k
    return labels, np.asarray(classes, dtype=np.int64)


def run_block_task(task: BlockTask) -> BlockResult:
    """Label and polygonize one block (in global pixel coordinates)."""
    import shapely
    from rasterio.features import shapes, sieve

    h = task.halo
    with read_env(task.raster, READ_CACHE_BYTES), no_georef_warning():
        with rasterio.open(task.raster) as src:
            r0, c0 = max(task.row_off - h, 0), max(task.col_off - h, 0)
            r1 = min(task.row_off + task.height + h, src.height)
            c1 = min(task.col_off + task.width + h, src.width)
            data, valid = read_valid_classes(src, Window(c0, r0, c1 - c0, r1 - r0), ())
            if task.sieve_pixels > 1:
                data = sieve(
                    data,
                    size=task.sieve_pixels,
                    connectivity=task.connectivity,
                    mask=valid.astype(np.uint8),
                )
            ys, xs = task.row_off - r0, task.col_off - c0
            data = data[ys : ys + task.height, xs : xs + task.width]
            valid = valid[ys : ys + task.height, xs : xs + task.width]
            if task.skip:
                valid &= ~np.isin(data, np.asarray(task.skip))
            probs = None
            if task.probabilities:
                with rasterio.open(task.probabilities) as psrc:
                    probs = psrc.read(
                        window=Window(task.col_off, task.row_off, task.width, task.height)
                    )
    labels, classes = label_components(data, valid, task.connectivity)
    n = len(classes)
    pixels = np.bincount(labels.ravel(), minlength=n)
    prob_sum = None
    if probs is not None:
        prob_sum = np.zeros(n, dtype=np.float64)
        for v, band in task.prob_band:
            sel = (data == v) & (labels > 0)
            if sel.any():
                prob_sum += np.bincount(labels[sel], weights=probs[band][sel] / 255.0, minlength=n)
    on_border = np.zeros(n, dtype=bool)
    on_border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    transform = Affine.translation(task.col_off, task.row_off)
    geoms: dict[int, bytes] = {}
    inner_ids: list[int] = []
    inner_geoms: list[Any] = []
    # shapes() builds in-memory rasters (the mask's has no geotransform): rasterio warns about them
    with no_georef_warning():
        found = list(
            shapes(labels, mask=labels > 0, connectivity=task.connectivity, transform=transform)
        )
    for geom, value in found:
        g = shapely.geometry.shape(geom)
        if on_border[int(value)]:
            geoms[int(value)] = shapely.to_wkb(g)
        else:
            inner_ids.append(int(value))
            inner_geoms.append(g)
    finished = None
    if inner_ids:
        ids = np.asarray(inner_ids)
        arr = np.asarray(inner_geoms, dtype=object)
        if task.segmentize:
            arr = shapely.segmentize(arr, 1.0)
        if not shapely.is_valid(arr).all():  # 8-connected regions touching themselves at a corner
            arr = shapely.make_valid(arr)
        if task.transform is not None:
            arr = apply_transform(arr, Affine(*task.transform))
        area, perim = Measurer.from_wkt(task.crs_wkt).many(arr)
        finished = Finished(
            list(shapely.to_wkb(arr)),
            classes[ids],
            area,
            perim,
            pixels[ids],
            None if prob_sum is None else prob_sum[ids],
        )
    return BlockResult(
        task.block_row,
        task.block_col,
        classes,
        pixels,
        prob_sum,
        geoms,
        labels[0].copy(),
        labels[-1].copy(),
        labels[:, 0].copy(),
        labels[:, -1].copy(),
        finished,
    )
