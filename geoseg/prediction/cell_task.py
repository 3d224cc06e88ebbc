"""What a worker does for one cell: predict its tiles, stitch them, and do all the per-pixel
output work there: compress the cell's tiles and overviews (:mod:`geoseg.raster.blocks`), and with
``--cells`` write the cell's COG and publish it (a local file or an object) itself.

A :class:`CellTask` carries paths, windows and small metadata, never arrays. In a single COG
the client gets back compressed tiles only (:mod:`geoseg.raster.cog_writer` places them); with
``--cells`` it gets back the names of the files published.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geoseg.errors import write_failed
from geoseg.prediction.stitch import TileResult
from geoseg.prediction.tasks import TileTask, run_tile_task
from geoseg.raster.blocks import (  # noqa: F401 (RasterMeta: re-exported)
    RasterMeta,
    RasterSpec,
    cog_tags,
    encode_tiles,
    overview_count,
    reduce2,
)
from geoseg.raster.tiff import write_cog


@dataclass(frozen=True)
class CellTask:
    """One cell: its tiles as a :class:`TileTask`, its window, and the rasters to make.

    ``levels``: overview levels compressed here (the client places them), ``raw_level``: also
    hand back the next level's pixels, which the client reduces further. With ``destinations``
    (one local path or ``s3://`` URL per raster) the worker writes each cell as a whole COG
    georeferenced by ``crs`` and ``transform`` and publishes it there instead."""

    tiles: TileTask
    window: Window
    rasters: tuple[RasterMeta, ...]
    levels: int = 0
    raw_level: bool = False
    destinations: tuple[str, ...] | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    #: Stored in each cell file's metadata: a rerun keeps cells whose token matches.
    token: str = ""
    encode_threads: int = 1
    #: WKT of the area kept, in the cell's pixel coordinates (x: column, y: row): a map's AOI;
    #: pixels whose centre lies outside are nodata in every raster
    clip: str | None = None


@dataclass
class CellResult:
    """What comes back to the client from a cell: compressed tiles (bytes, small), never pixels,
    except the few of ``raw`` (the last local overview level, reduced once more)."""

    window: Window
    tiles: int
    skipped: list[tuple[Window, str]] = field(default_factory=list)
    #: per raster, per level: the cell's tiles, row-major over its blocks
    blocks: list[list[list[bytes]]] = field(default_factory=list)
    raw: list[np.ndarray | None] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def run_cell_task(task: CellTask) -> CellResult:
    """Predict, stitch and compress one cell (see :class:`CellTask`)."""
    w = task.window
    r0, c0, height, width = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
    arrays = [
        np.full((m.spec.count, height, width), m.spec.nodata or 0, m.spec.dtype)
        for m in task.rasters
    ]
    names = [m.spec.name for m in task.rasters]
    skipped: list[tuple[Window, str]] = []
    count = [0]

    def stitch(res: TileResult) -> None:
        r, c = int(res.core.row_off) - r0, int(res.core.col_off) - c0
        h, wd = res.classes.shape[-2:]
        count[0] += 1
        for name, arr, meta in zip(names, arrays, task.rasters):
            place = arr[:, r : r + h, c : c + wd]
            if res.error is not None:
                place[...] = meta.spec.nodata or 0
            elif name == "classes":
                place[0] = res.classes
            elif name == "probabilities":
                assert res.probabilities is not None
                place[...] = res.probabilities
            elif name == "confidence":
                assert res.probabilities is not None
                np.max(res.probabilities, axis=0, out=place[0])
        if res.error is not None:
            skipped.append((res.core, res.error))

    run_tile_task(task.tiles, emit=stitch)
    if task.clip is not None:
        outside = _outside(task.clip, height, width)
        for arr, meta in zip(arrays, task.rasters):
            arr[:, outside] = meta.spec.nodata or 0
    return _finish(task, arrays, CellResult(window=w, tiles=count[0], skipped=skipped))


def _outside(clip: str, height: int, width: int) -> np.ndarray:
    """Pixels of a cell whose centre lies outside the ``clip`` geometry (WKT, pixel coordinates)."""
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.transform import Affine

    geom = shapely.from_wkt(clip)
    if geom.is_empty:
        return np.ones((height, width), bool)
    return geometry_mask([geom], (height, width), Affine.identity())


def nodata_cell(task: CellTask, error: str) -> CellResult:
    """The cell as nodata, with every tile listed as skipped for ``error`` (a task that died)."""
    h, w = int(task.window.height), int(task.window.width)
    arrays = [np.full((m.spec.count, h, w), m.spec.nodata or 0, m.spec.dtype) for m in task.rasters]
    result = CellResult(
        window=task.window,
        tiles=len(task.tiles.tiles),
        skipped=[(t.core, error) for t in task.tiles.tiles],
    )
    return _finish(task, arrays, result)


def _finish(task: CellTask, arrays: list[np.ndarray], result: CellResult) -> CellResult:
    """Publish the stitched cell (``--cells``) or compress it for the client."""
    if task.destinations is not None:
        for meta, arr, dest in zip(task.rasters, arrays, task.destinations):
            write_cell_file(arr, meta, dest, task)
            result.files.append(dest)
        return result
    for meta, arr in zip(task.rasters, arrays):
        levels, last = encode_levels(arr, meta.spec, task.levels, task.encode_threads)
        result.blocks.append(levels)
        result.raw.append(
            reduce2(last, meta.spec.reduction, meta.spec.nodata) if task.raw_level else None
        )
    return result


def encode_levels(
    array: np.ndarray, spec: RasterSpec, levels: int, threads: int = 1
) -> tuple[list[list[bytes]], np.ndarray]:
    """Compressed tiles of ``array`` and of its first ``levels`` overviews; and the last level's
    pixels."""
    out = [encode_tiles(array, spec, threads)]
    for _ in range(levels):
        array = reduce2(array, spec.reduction, spec.nodata)
        out.append(encode_tiles(array, spec, threads))
    return out, array


def cog_file_bytes(
    array: np.ndarray, meta: RasterMeta, crs: Any, transform: Any, path: Path, threads: int = 1
) -> None:
    """Write ``array`` as a whole COG (every overview made here) to ``path``."""
    _, height, width = array.shape
    levels, _ = encode_levels(array, meta.spec, overview_count(width, height), threads)
    tags = meta.tiff_tags(width, height, crs, transform)
    with open(path, "wb") as f:
        write_cog(f, tags, [[len(t) for t in lv] for lv in levels], lambda i, j: levels[i][j])


def write_cell_file(array: np.ndarray, meta: RasterMeta, destination: str, task: CellTask) -> None:
    """Write the cell's COG and publish it at ``destination``: renamed into place beside it, or
    uploaded as one object, so a reader never sees part of a cell."""
    from affine import Affine

    from geoseg.fs import publish_file

    tags = dict(meta.tags)
    tags["GEOSEG_CELL_TOKEN"] = task.token
    meta = RasterMeta(meta.spec, meta.colormap, tuple(tags.items()), meta.descriptions)
    transform = Affine(*task.transform) if task.transform is not None else None
    if destination.startswith("s3://"):
        from geoseg.objectstore.uploads import upload_file

        fd, name = tempfile.mkstemp(prefix=".geoseg-cell-", suffix=".tif")
        os.close(fd)
        try:
            cog_file_bytes(array, meta, task.crs, transform, Path(name), task.encode_threads)
            upload_file(
                Path(name), destination, "image/tiff; application=geotiff; profile=cloud-optimized"
            )
        except OSError as exc:
            raise write_failed(f"a local temporary file for {destination}", exc) from None
        finally:
            Path(name).unlink(missing_ok=True)
        return
    final = Path(destination)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part.tif", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        cog_file_bytes(array, meta, task.crs, transform, tmp, task.encode_threads)
        publish_file(tmp, final)
    except OSError as exc:
        raise write_failed(final, exc) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
