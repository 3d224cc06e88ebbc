"""Polygons from a class raster, block by block on Dask, merged exactly across block borders.

Each block is labelled into connected components (per class, 4- or 8-connected) and each
component polygonized in global pixel coordinates. The client joins components that touch
across a block border (same class, adjacent pixels) with a union-find, unions their parts
exactly (integer pixel coordinates), applies the geotransform, and streams finished polygons to
the output as soon as no later block row can extend them. The result equals polygonizing the
whole raster in one pass.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from geoseg.classes import read_class_names
from geoseg.errors import OutputError, VectorizeError, first_line
from geoseg.fs import (
    check_distinct_paths,
    check_output_path,
    lock_output_folders,
    publish_file,
    remove_quietly,
    temporary_sibling,
)
from geoseg.options import VECTOR_FORMATS
from geoseg.raster.block_cache import READ_CACHE_BYTES
from geoseg.raster.read import no_georef_warning, open_scene, read_env
from geoseg.vector.styles import qml_sidecar, raster_classes, write_gpkg_style, write_qml_sidecar

if TYPE_CHECKING:
    from geoseg.dask.stream import TaskSlots


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


class _Groups:
    """Union-find over global component ids, with the members of each group."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}

    def add(self, g: int) -> None:
        self.parent[g] = g
        self.members[g] = [g]

    def find(self, g: int) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))


def _join_pairs(
    groups: _Groups, a: np.ndarray, b: np.ndarray, ca: np.ndarray, cb: np.ndarray, connectivity: int
) -> None:
    """Union components on two facing pixel lines (global ids ``a``/``b``, classes ``ca``/``cb``)."""
    offsets = (0,) if connectivity == 4 else (-1, 0, 1)
    n = len(a)
    for off in offsets:
        lo, hi = max(0, -off), min(n, n - off)
        x, y = a[lo:hi], b[lo + off : hi + off]
        cx, cy = ca[lo:hi], cb[lo + off : hi + off]
        keep = (x > 0) & (y > 0) & (cx == cy)
        if keep.any():
            for p, q in set(zip(x[keep].tolist(), y[keep].tolist())):
                groups.union(p, q)


@dataclass
class Polygon:
    """A finished region: class, geometry in pixel coordinates, pixel count, probability sum."""

    value: int
    geometry: Any
    pixels: int
    prob_sum: float | None


def merge_blocks(
    results: Iterator[list[BlockResult]], connectivity: int, n_rows: int
) -> Iterator[Polygon | Finished]:
    """Given block rows in order, yield each block's finished regions, and each region that
    crosses block borders once no later row can extend it."""
    import shapely

    groups = _Groups()
    info: dict[int, tuple[int, int, float | None, bytes]] = {}
    prev_bottom: np.ndarray | None = None
    prev_bottom_cls: np.ndarray | None = None
    next_id = 0  # global ids: a running count of components, unique and far from int64's end
    for r, row in enumerate(results):
        row = sorted(row, key=lambda b: b.block_col)
        tops, bottoms, tcls, bcls = [], [], [], []
        lefts_rights: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for b in row:
            if b.finished is not None:
                yield b.finished
            base = next_id
            next_id += len(b.classes)
            local_ids = np.arange(len(b.classes), dtype=np.int64)
            gid = np.where(local_ids > 0, local_ids + base, 0)
            for local, wkb in b.geoms.items():
                g = base + local
                groups.add(g)
                info[g] = (
                    int(b.classes[local]),
                    int(b.pixels[local]),
                    None if b.prob_sum is None else float(b.prob_sum[local]),
                    wkb,
                )
            tops.append(gid[b.top])
            bottoms.append(gid[b.bottom])
            tcls.append(b.classes[b.top])
            bcls.append(b.classes[b.bottom])
            lefts_rights.append((gid[b.left], gid[b.right], b.classes[b.left], b.classes[b.right]))
        for (_, right, _, rcls), (left, _, lcls, _) in zip(lefts_rights, lefts_rights[1:]):
            _join_pairs(groups, right, left, rcls, lcls, connectivity)
        top, top_cls = np.concatenate(tops), np.concatenate(tcls)
        if prev_bottom is not None and prev_bottom_cls is not None:
            _join_pairs(groups, prev_bottom, top, prev_bottom_cls, top_cls, connectivity)
        prev_bottom, prev_bottom_cls = np.concatenate(bottoms), np.concatenate(bcls)
        last = r == n_rows - 1
        open_roots = set() if last else {groups.find(int(g)) for g in np.unique(prev_bottom) if g}
        for root in [g for g in list(groups.members) if g not in open_roots]:
            members = groups.members.pop(root)
            parts = [info.pop(m) for m in members]
            for m in members:
                del groups.parent[m]
            geoms = shapely.from_wkb([p[3] for p in parts])
            geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
            if not geom.is_valid:  # 8-connected regions touching themselves at a corner
                geom = shapely.make_valid(geom)
            probs = [p[2] for p in parts]
            yield Polygon(
                parts[0][0],
                geom,
                sum(p[1] for p in parts),
                None if probs[0] is None else float(sum(probs)),  # type: ignore[arg-type]
            )


def apply_transform(geom: Any, transform: Affine) -> Any:
    """Pixel coordinates -> CRS coordinates (exact affine map of every vertex)."""
    import shapely

    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def fn(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

    return shapely.transform(geom, fn)


class Measurer:
    """Area (square metres) and perimeter (metres); geodesic on the ellipsoid for geographic CRSs."""

    def __init__(self, crs: Any) -> None:
        self.geod = None
        self.factor = 1.0
        if crs is not None and crs.is_geographic:
            from pyproj import CRS as ProjCRS
            from pyproj import Geod

            self.geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
        elif crs is not None:
            self.factor = float(crs.linear_units_factor[1]) if crs.linear_units_factor else 1.0

    @classmethod
    def from_wkt(cls, wkt: str | None) -> "Measurer":
        from rasterio.crs import CRS

        return cls(CRS.from_wkt(wkt) if wkt else None)

    def __call__(self, geom: Any) -> tuple[float, float]:
        if self.geod is not None:
            area, perimeter = self.geod.geometry_area_perimeter(geom)
            return abs(area), perimeter
        return geom.area * self.factor**2, geom.length * self.factor

    def many(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Areas and perimeters of an array of geometries (vectorized unless geodesic)."""
        import shapely

        if self.geod is not None:
            pairs = [self(g) for g in geoms]
            return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        return shapely.area(geoms) * self.factor**2, shapely.length(geoms) * self.factor


@dataclass
class VectorizeResult:
    """What was written and counted."""

    output: Path
    polygons: int
    per_class: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def output_format(path: Path) -> tuple[str, bool]:
    """GDAL driver for an output path by extension, or a one-line error listing the choices."""
    try:
        return VECTOR_FORMATS[path.suffix.lower()]
    except KeyError:
        raise VectorizeError(
            f"unknown vector format {path.suffix or '(no extension)'!r} for {path.name}; use one of "
            + ", ".join(sorted(VECTOR_FORMATS))
        ) from None


def _block_size(src: Any, requested: int | None) -> int:
    """Blocks aligned to the raster's internal tiling: a multiple of its block size, ~1024 px."""
    bh, bw = src.block_shapes[0]
    base = max(bh, bw) if bh == bw else max(bh, bw, 256)
    target = requested or 1024
    return max(base, target // base * base)


def vectorize(
    raster: str | os.PathLike[str],
    output: str | os.PathLike[str],
    connectivity: int = 4,
    skip_classes: Sequence[int] = (),
    min_area: float = 0.0,
    simplify: float | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    quiet: bool = True,
    timestamp: str | None = None,
    dst_crs: str | None = None,
    style: bool = True,
    verbose: bool = False,
    max_in_flight: int | TaskSlots | None = None,
) -> VectorizeResult:
    """Polygonize a class raster into ``output`` (format by extension), one feature per region.

    ``min_area`` (square CRS units) sieves smaller regions into their neighbours first;
    ``simplify`` (CRS units) simplifies the whole layer as a coverage, so shared borders stay
    shared. Attributes (Shapefile-safe names): class, class_name, area_m2, perim_m, pixels, mean_prob
    when a probabilities raster (from ``geoseg predict --probabilities``) is given.
    ``timestamp`` (ISO 8601) fixes the GeoPackage's last-change date, for byte-identical reruns.
    ``dst_crs`` (anything rasterio's ``CRS.from_user_input`` reads) writes the polygons in another
    CRS; areas and perimeters are still measured in the raster's CRS (geodesically when it is
    geographic). ``style`` adds the default QGIS style, categorized by class in the raster's colours
    (GeoPackage: its ``layer_styles`` table; other formats: a ``.qml`` sidecar).
    ``verbose`` lets the local workers' own logs through to stderr.
    ``max_in_flight``: block tasks in flight (default: two block rows, at least 2 per worker
    thread), or :class:`~geoseg.dask.stream.TaskSlots` shared with other work (a batch's scenes).
    """
    import shapely

    from geoseg.dask.session import cpu_count, dask_session
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    out = check_output_path(output, overwrite, "vector output")
    check_distinct_paths(
        {"class raster": raster, "probabilities raster": probabilities}, {"vector output": out}
    )
    driver = output_format(out)[0]
    info = open_scene(raster)
    target, out_crs = check_vector_options(
        out,
        info.crs,
        connectivity=connectivity,
        skip_classes=skip_classes,
        min_area=min_area,
        simplify=simplify,
        dst_crs=dst_crs,
    )
    if not np.issubdtype(np.dtype(info.dtype), np.integer):
        raise VectorizeError(
            f"{raster} holds {info.dtype} values: not a class raster; polygonize the class raster "
            "from 'geoseg predict', or round the values to integer classes first"
        )
    with no_georef_warning():
        with rasterio.open(raster) as src:
            names = read_class_names(src)
            block = _block_size(src, block_size)
            classes = (
                [c for c in raster_classes(src) if c.value not in set(skip_classes)]
                if style
                else []
            )
    sidecar = qml_sidecar(out) if classes and driver != "GPKG" else None
    if sidecar is not None:
        check_output_path(sidecar, overwrite, "style sidecar")
    reproject = _reprojector(info.crs, target) if target is not None else None
    pixel_area = (
        abs(info.transform.a * info.transform.e - info.transform.b * info.transform.d) or 1.0
    )
    sieve_px = int(math.ceil(min_area / pixel_area)) if min_area > 0 else 0
    halo = min(sieve_px, 4 * block) if sieve_px else 0
    prob_band: tuple[tuple[int, int], ...] = ()
    if probabilities is not None:
        prob_band = _probability_bands(str(probabilities), info, names)
    rows = -(-info.height // block)
    cols = -(-info.width // block)
    tasks = [
        BlockTask(
            str(raster),
            r,
            c,
            r * block,
            c * block,
            min(block, info.height - r * block),
            min(block, info.width - c * block),
            connectivity,
            tuple(int(s) for s in skip_classes),
            sieve_px,
            halo,
            str(probabilities) if probabilities else None,
            prob_band,
            tuple(info.transform)[:6] if info.georeferenced else None,
            info.crs.to_wkt() if info.crs is not None else None,
            bool(simplify),
        )
        for r in range(rows)
        for c in range(cols)
    ]
    locks = lock_output_folders([out], "vectorize")
    tmp = temporary_sibling(out, ".gpkg")
    measure = Measurer(info.crs)
    per_class: dict[int, int] = {}
    progress = Progress(len(tasks), unit="blocks", quiet=quiet)
    try:
        # processes, not threads: turning GDAL's polygons into geometries holds the GIL
        with (
            dask_session(
                client, scheduler, workers or cpu_count(), processes=True, verbose=verbose
            ) as session,
            _ogr_date(timestamp),
        ):
            limit = max_in_flight or max(2 * cols, 2 * session.threads)
            writer = _GpkgWriter(
                tmp,
                info.crs if simplify else out_crs,
                probabilities is not None,
                reproject=None if simplify else reproject,
            )
            for item in merge_blocks(
                _rows(session.client, tasks, cols, limit, progress), connectivity, rows
            ):
                if isinstance(item, Finished):
                    writer.add_many(item, names)
                    for v, k in zip(*np.unique(item.classes, return_counts=True)):
                        per_class[int(v)] = per_class.get(int(v), 0) + int(k)
                    continue
                geom = item.geometry
                if simplify:
                    # a vertex at every pixel corner, so neighbours share identical edges (a valid
                    # coverage, as coverage_simplify requires); exact in integer pixel coordinates
                    geom = shapely.segmentize(geom, 1.0)
                geom = apply_transform(geom, info.transform) if info.georeferenced else geom
                area, perim = measure(geom)
                mean_p = None if item.prob_sum is None else item.prob_sum / max(item.pixels, 1)
                writer.add(
                    geom,
                    item.value,
                    names.get(item.value, str(item.value)),
                    area,
                    perim,
                    item.pixels,
                    mean_p,
                )
                per_class[item.value] = per_class.get(item.value, 0) + 1
            writer.close()
            progress.close()
            if simplify:
                _simplify_layer(tmp, simplify, measure, reproject, out_crs)
            if classes and driver == "GPKG":
                write_gpkg_style(tmp, classes, "polygons", timestamp=timestamp)
            _publish(tmp, out, driver, out_crs)
            if sidecar is not None:
                write_qml_sidecar(out, classes)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        locks.close()
    return VectorizeResult(out, sum(per_class.values()), per_class, time.perf_counter() - t0)


def output_crs(out: Path, src_crs: Any, dst_crs: str | None) -> tuple[Any, Any]:
    """``(target, written)``: the CRS to reproject to (None: keep the raster's) and the CRS the
    file ends up in, checked against the format (GeoJSON holds EPSG:4326 only, as RFC 7946 says)."""
    driver, any_crs = output_format(out)
    target = _target_crs(dst_crs, src_crs)
    written = target if target is not None else src_crs
    if written is not None and not any_crs and written.to_epsg() != 4326:
        raise VectorizeError(
            f"{driver} holds WGS 84 (EPSG:4326) coordinates only, and the raster is in "
            f"{written.to_string()}; add --dst-crs EPSG:4326, or write .gpkg or .fgb instead"
        )
    return target, written


def _target_crs(dst_crs: str | None, src_crs: Any) -> Any:
    """The CRS polygons are written in when ``--dst-crs`` is given (None: the raster's own)."""
    if dst_crs is None:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        crs = CRS.from_user_input(dst_crs)
    except CRSError:
        raise VectorizeError(
            f"--dst-crs {dst_crs!r} is not a CRS PROJ knows; give e.g. EPSG:4326 or a WKT string"
        ) from None
    if src_crs is None:
        raise VectorizeError("--dst-crs needs a raster with a CRS; this one has none")
    return None if crs == src_crs else crs


def _reprojector(src_crs: Any, dst_crs: Any) -> Any:
    """A function reprojecting an array of geometries (vertices, x/y order) from the raster's CRS."""
    import shapely
    from pyproj import Transformer

    transformer = Transformer.from_crs(src_crs.to_wkt(), dst_crs.to_wkt(), always_xy=True)

    def xy(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    def apply(geoms: Any) -> Any:
        return shapely.transform(geoms, xy)

    return apply


#: Serializes the process-wide OGR_CURRENT_DATE (see :func:`_ogr_date`).
_OGR_DATE_LOCK = threading.Lock()


@contextlib.contextmanager
def _ogr_date(timestamp: str | None) -> Iterator[None]:
    """Scope OGR_CURRENT_DATE (the GeoPackage last-change stamp) in pyogrio's GDAL, then reset it."""
    if timestamp is None:
        yield
        return
    import pyogrio

    # the option is process-wide: polygonizations run at once (a batch's scenes) take turns
    with _OGR_DATE_LOCK:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": timestamp})
        try:
            yield
        finally:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


def _rows(
    client: Any, tasks: list[BlockTask], cols: int, limit: int | TaskSlots, progress: Any
) -> Iterator[list[BlockResult]]:
    """Block rows in order, computed with at most ``limit`` block tasks in flight."""
    from dask.base import tokenize

    from geoseg.dask.stream import stream
    from geoseg.raster.scenes import file_token

    stat = file_token(tasks[0].raster) if tasks else None
    pending: dict[int, dict[int, BlockResult]] = {}
    next_row = 0
    n_rows = -(-len(tasks) // cols) if tasks else 0
    for _, res in stream(
        client,
        run_block_task,
        tasks,
        limit,
        key=lambda t, i: f"geoseg-polygons-{tokenize(t, stat)}",
    ):
        progress.update(1)
        pending.setdefault(res.block_row, {})[res.block_col] = res
        while next_row < n_rows and len(pending.get(next_row, {})) == cols:
            yield list(pending.pop(next_row).values())
            next_row += 1


def _probability_bands(path: str, info: Any, names: dict[int, str]) -> tuple[tuple[int, int], ...]:
    """Band (0-based) of each class value in a geoseg probabilities raster, checked against the grid."""
    with rasterio.open(path) as p:
        if (p.width, p.height) != (info.width, info.height):
            raise VectorizeError(
                f"probabilities {path} are {p.width}x{p.height}, the classes {info.width}x{info.height}"
            )
        values = [int(c["value"]) for c in json.loads(p.tags().get("GEOSEG_CLASSES", "[]"))]
    if len(values) == 0:
        raise VectorizeError(
            f"{path} is not a geoseg probabilities raster (no GEOSEG_CLASSES metadata)"
        )
    return tuple((v, i) for i, v in enumerate(values))


class _GpkgWriter:
    """Appends features to a GeoPackage in batches, so memory does not grow with the layer."""

    FIELDS = ["class", "class_name", "area_m2", "perim_m", "pixels"]

    def __init__(
        self, path: Path, crs: Any, with_prob: bool, batch: int = 20000, reproject: Any = None
    ) -> None:
        self.path = path
        self.crs = crs.to_wkt() if crs is not None else None
        self.reproject = reproject
        self.with_prob = with_prob
        self.batch = batch
        self.written = False
        self._reset()

    def _reset(self) -> None:
        self.wkb: list[bytes] = []
        self.cols: list[list[Any]] = [[] for _ in range(6)]

    def add(
        self,
        geom: Any,
        value: int,
        name: str,
        area: float,
        perim: float,
        pixels: int,
        mean_prob: float | None,
    ) -> None:
        import shapely

        self.wkb.append(shapely.to_wkb(geom))
        for col, v in zip(self.cols, (value, name, area, perim, pixels, mean_prob)):
            col.append(v)
        if len(self.wkb) >= self.batch:
            self.flush()

    def add_many(self, f: Finished, names: dict[int, str]) -> None:
        """Append a block's finished regions (already measured, WKB)."""
        values = f.classes.tolist()
        self.wkb.extend(f.wkb)
        self.cols[0].extend(values)
        self.cols[1].extend(names.get(v, str(v)) for v in values)
        self.cols[2].extend(f.area.tolist())
        self.cols[3].extend(f.perimeter.tolist())
        self.cols[4].extend(f.pixels.tolist())
        mean = (
            [None] * len(values)
            if f.prob_sum is None
            else (f.prob_sum / np.maximum(f.pixels, 1)).tolist()
        )
        self.cols[5].extend(mean)
        if len(self.wkb) >= self.batch:
            self.flush()

    def flush(self) -> None:
        import pyogrio

        if not self.wkb and self.written:
            return
        c = self.cols
        data = [
            np.asarray(c[0], dtype=np.int32),
            np.asarray(c[1], dtype=object),
            np.asarray(c[2], dtype=np.float64),
            np.asarray(c[3], dtype=np.float64),
            np.asarray(c[4], dtype=np.int64),
        ]
        fields = list(self.FIELDS)
        wkb = np.asarray(self.wkb, dtype=object)
        if self.reproject is not None and len(wkb):
            import shapely

            wkb = shapely.to_wkb(self.reproject(shapely.from_wkb(wkb)))
        if self.with_prob:
            data.append(np.asarray([np.nan if v is None else v for v in c[5]], dtype=np.float64))
            fields.append("mean_prob")
        pyogrio.raw.write(
            str(self.path),
            wkb,
            data,
            fields,
            crs=self.crs,
            geometry_type="MultiPolygon",
            promote_to_multi=True,
            driver="GPKG",
            layer="polygons",
            append=self.written,
        )
        self.written = True
        self._reset()

    def close(self) -> None:
        self.flush()


def _simplify_layer(
    path: Path, tolerance: float, measure: Measurer, reproject: Any = None, out_crs: Any = None
) -> None:
    """Simplify the whole layer as a coverage (shared borders once), recompute measures, then
    reproject it when asked (simplification and measures work in the raster's CRS)."""
    import pyogrio
    import shapely

    meta, _, wkb, data = pyogrio.raw.read(str(path), layer="polygons")
    if wkb is None or len(wkb) == 0:
        return
    geoms = shapely.coverage_simplify(shapely.from_wkb(wkb), tolerance)
    fields = list(meta["fields"])
    data = list(data)
    for i, g in enumerate(geoms):
        area, perim = measure(g)
        data[fields.index("area_m2")][i] = area
        data[fields.index("perim_m")][i] = perim
    crs = meta["crs"]
    if reproject is not None:
        geoms = reproject(geoms)
        crs = out_crs.to_wkt()
    remove_quietly(path)
    pyogrio.raw.write(
        str(path),
        np.asarray(shapely.to_wkb(geoms), dtype=object),
        data,
        fields,
        crs=crs,
        geometry_type="MultiPolygon",
        promote_to_multi=True,
        driver="GPKG",
        layer="polygons",
    )


def _publish(tmp: Path, out: Path, driver: str, crs: Any) -> None:
    """Move the staged GeoPackage to the output path, converting the format if needed."""
    import pyogrio

    if driver == "GPKG":
        publish_file(tmp, out)
        return
    staged = temporary_sibling(out, out.suffix)
    try:
        if driver == "Parquet":
            _write_geoparquet(tmp, staged)
        else:
            meta, _, wkb, data = pyogrio.raw.read(str(tmp), layer="polygons")
            opts: dict[str, Any] = (
                {"SPATIAL_INDEX": "YES"} if driver in ("FlatGeobuf", "ESRI Shapefile") else {}
            )
            if driver in ("GeoJSON", "FlatGeobuf"):
                opts["layer"] = out.stem  # not the staged file's hidden name
            if driver == "ESRI Shapefile":
                staged = staged.with_suffix(".shp")
            pyogrio.raw.write(
                str(staged),
                wkb if wkb is not None else np.array([], dtype=object),
                data,
                list(meta["fields"]),
                crs=meta["crs"],
                geometry_type="MultiPolygon",
                driver=driver,
                **opts,
            )
        if driver == "ESRI Shapefile":
            for side in staged.parent.glob(glob.escape(staged.stem) + ".*"):
                publish_file(side, out.with_suffix(side.suffix))
        else:
            publish_file(staged, out)
    finally:
        remove_quietly(tmp)


def _write_geoparquet(src: Path, dst: Path) -> None:
    """GeoParquet 1.0 (WKB geometry + 'geo' metadata) through pyarrow."""
    _require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyogrio
    import shapely

    meta, _, wkb, data = pyogrio.raw.read(str(src), layer="polygons")
    geoms = shapely.from_wkb(wkb) if wkb is not None else np.array([])
    cols = {name: pa.array(values) for name, values in zip(meta["fields"], data)}
    cols["geometry"] = pa.array(list(wkb) if wkb is not None else [], type=pa.binary())
    bbox = list(shapely.total_bounds(geoms)) if len(geoms) else []
    crs_json = None
    if meta["crs"]:
        from pyproj import CRS as ProjCRS

        crs_json = ProjCRS.from_user_input(meta["crs"]).to_json_dict()
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["MultiPolygon"],
                "crs": crs_json,
                "bbox": bbox,
            }
        },
    }
    table = pa.table(cols).replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, dst)


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise OutputError(
            "GeoParquet output needs pyarrow: pip install 'geoseg[parquet]'"
        ) from None


def check_vector_options(
    output: str | os.PathLike[str], crs: Any = None, **options: Any
) -> tuple[Any, Any]:
    """Check polygon options before any work (predict runs it before predicting): the values
    (as :class:`geoseg.options.VectorOptions`), the format and what it needs (pyarrow), and the
    CRS the file would be in (GeoJSON: EPSG:4326). Returns :func:`output_crs`'s ``(target, written)``."""
    from geoseg.options import VectorOptions

    run_keys = ("timestamp", "quiet", "verbose", "workers", "scheduler", "dst_crs", "style")
    try:
        values: dict[str, Any] = {
            k: (tuple(v) if k == "skip_classes" and isinstance(v, list) else v)
            for k, v in options.items()
            if k not in run_keys
        }
        VectorOptions(**values)
    except TypeError as exc:
        raise VectorizeError(f"unknown vector option ({first_line(exc)})") from None
    out = Path(output)
    if output_format(out)[0] == "Parquet":
        _require_pyarrow()
    return output_crs(out, crs, options.get("dst_crs"))
