"""A map's cell as a virtual scene: several scenes read onto one output grid, window by window.

A cell task of ``geoseg map`` carries a small self-describing string (:data:`PREFIX` + JSON: the
output grid, the region's extent and only the scenes that reach the cell, in priority order).
The worker's scene opener recognises it and opens a :class:`MosaicSource`, which answers the
reads :func:`geoseg.raster.read.read_mirrored` makes: a scene on the output grid is read as a plain
window, any other through a :class:`rasterio.vrt.WarpedVRT` onto the grid (nothing warped is
written to disk); a pixel without data in one scene falls through to the next. Windows are
mirrored at the region's edges, not the cell's: tiles near a cell's or an AOI's edge read the
real pixels beyond it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from geoseg.paths import MOSAIC_PREFIX as PREFIX


@dataclass(frozen=True)
class SpecScene:
    """One scene of a cell: what GDAL opens, a name for messages, and where it lies on the grid.

    ``offset`` (row, col of the scene's first pixel on the output grid) for a scene on the grid;
    else ``None`` and ``window`` (row0, col0, row1, col1 on the output grid) bounds its warped
    footprint. ``token``: the file's size and time, so a changed file changes the task's key."""

    dataset: str
    name: str
    offset: tuple[int, int] | None
    window: tuple[int, int, int, int]
    token: Any = None


def mosaic_spec(
    crs: str | None,
    transform: Sequence[float],
    height: int,
    width: int,
    extent: tuple[int, int, int, int],
    count: int,
    dtype: str,
    resampling: str,
    scenes: Sequence[SpecScene],
) -> str:
    """The scene string of a map cell: the grid of the virtual scene (``height`` x ``width`` at
    ``transform``), the ``extent`` (row0, col0, row1, col1) where the region has pixels (reads
    mirror at its edges), and the scenes, first priority first."""
    return PREFIX + json.dumps(
        {
            "crs": crs,
            "transform": list(transform)[:6],
            "height": height,
            "width": width,
            "extent": list(extent),
            "count": count,
            "dtype": dtype,
            "resampling": resampling,
            "scenes": [
                {
                    "dataset": s.dataset,
                    "name": s.name,
                    "offset": list(s.offset) if s.offset else None,
                    "window": list(s.window),
                    "token": s.token,
                }
                for s in scenes
            ],
        },
        separators=(",", ":"),
    )


class MosaicSource:
    """The duck-typed dataset a worker reads a map cell's tiles from (see the module)."""

    def __init__(self, scene: str) -> None:
        spec = json.loads(scene[len(PREFIX) :])
        from affine import Affine
        from rasterio.crs import CRS

        self.name = scene
        self.height, self.width = int(spec["height"]), int(spec["width"])
        self.count = int(spec["count"])
        self.dtypes = (str(spec["dtype"]),) * self.count
        self.crs = CRS.from_wkt(spec["crs"]) if spec["crs"] else None
        self.transform = Affine(*spec["transform"])
        self.extent = tuple(int(v) for v in spec["extent"])
        self.resampling = str(spec["resampling"])
        self.scenes = [
            SpecScene(
                s["dataset"],
                s["name"],
                tuple(s["offset"]) if s["offset"] else None,
                tuple(s["window"]),
                s.get("token"),
            )
            for s in spec["scenes"]
        ]
        self._open: dict[int, Any] = {}

    # --- what geoseg.raster.read.read_mirrored asks of a dataset -----------------------------------

    def read_mirrored(
        self,
        bands: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window of the virtual scene mirrored at the region's edges (not the cell's):
        ``(data, valid)`` like :func:`geoseg.raster.read.read_mirrored`."""
        from geoseg.tiling import source_indices

        r0, c0, r1, c1 = self.extent
        rows = source_indices(row - r0, height, r1 - r0) + r0
        cols = source_indices(col - c0, width, c1 - c0) + c0
        top, left = int(rows.min()), int(cols.min())
        data, valid = self.composite(
            bands, top, left, int(rows.max()) + 1 - top, int(cols.max()) + 1 - left
        )
        ri, ci = (rows - top)[:, None], (cols - left)[None, :]
        if out is None:
            return data[:, ri, ci], valid[ri, ci]
        out[0][...] = data[:, ri, ci]
        out[1][...] = valid[ri, ci]
        return out

    def read(
        self, indexes: Sequence[int] | int, window: Any = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Bands of a window inside the region (no mirroring), like ``DatasetReader.read``."""
        bands = [indexes] if isinstance(indexes, int) else list(indexes)
        r, c, h, w = self._window(window)
        data, _ = self.composite(bands, r, c, h, w)
        data = data[0] if isinstance(indexes, int) else data
        if out is not None:
            out[...] = data
            return out
        return data

    def dataset_mask(self, window: Any = None) -> np.ndarray:
        """255 where some scene has data, 0 elsewhere."""
        r, c, h, w = self._window(window)
        _, valid = self.composite([1], r, c, h, w)
        return valid.astype(np.uint8) * 255

    def close(self) -> None:
        for src in self._open.values():
            for ds in src:
                ds.close()
        self._open.clear()

    def __enter__(self) -> "MosaicSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _window(self, window: Any) -> tuple[int, int, int, int]:
        if window is None:
            return 0, 0, self.height, self.width
        return int(window.row_off), int(window.col_off), int(window.height), int(window.width)

    # --- compositing ----------------------------------------------------------------------

    def composite(
        self, bands: Sequence[int], row: int, col: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of the window (output-grid rows and columns) from the first scene, in priority
        order, that has data there: ``(data, valid)``."""
        data = np.zeros((len(bands), height, width), self.dtypes[0])
        valid = np.zeros((height, width), bool)
        for i, s in enumerate(self.scenes):
            r0, c0, r1, c1 = s.window
            top, left = max(row, r0), max(col, c0)
            bottom, right = min(row + height, r1), min(col + width, c1)
            if bottom <= top or right <= left:
                continue
            place = (slice(top - row, bottom - row), slice(left - col, right - col))
            if valid[place].all():
                continue
            block, mask = self._read_scene(i, bands, top, left, bottom - top, right - left)
            take = mask & ~valid[place]
            np.copyto(data[:, place[0], place[1]], block, where=take[None], casting="unsafe")
            valid[place] |= take
            if valid.all():
                break
        return data, valid

    def _read_scene(
        self, index: int, bands: Sequence[int], row: int, col: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window of one scene on the output grid (inside its footprint window)."""
        from rasterio.windows import Window

        from geoseg.paths import describe
        from geoseg.raster.read import read_window

        s = self.scenes[index]

        def where() -> str:
            return (
                f"{describe(s.name)} for the map (rows {row}-{row + height}, columns "
                f"{col}-{col + width} of the output)"
            )

        r0, c0 = s.offset if s.offset is not None else s.window[:2]
        window = Window(col - c0, row - r0, width, height)
        return read_window(lambda: self._dataset(index), bands, window, where)

    def _dataset(self, index: int) -> Any:
        """The scene opened (and for one off the grid, warped onto it over its footprint)."""
        found = self._open.get(index)
        if found is not None:
            return found[-1]
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        from geoseg.raster.read import no_georef_warning

        s = self.scenes[index]
        with no_georef_warning():
            src = rasterio.open(s.dataset)
        opened = [src]
        if s.offset is None:
            r0, c0, r1, c1 = s.window
            vrt = WarpedVRT(
                src,
                crs=self.crs,
                transform=self.transform * self.transform.translation(c0, r0),
                width=c1 - c0,
                height=r1 - r0,
                resampling=Resampling[self.resampling],
                add_alpha=src.nodata is None,  # the mask of the warped pixels
            )
            opened.append(vrt)
        self._open[index] = opened
        return opened[-1]


def open_mosaic(scene: str) -> MosaicSource:
    """Open a map cell's scene string (see :func:`mosaic_spec`)."""
    return MosaicSource(scene)
