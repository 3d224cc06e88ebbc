"""Class and probability rasters written as Cloud-Optimized GeoTIFFs: a :class:`RasterSink`
per output, staged beside its final path and published with :func:`geoseg.fs.publish_all`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window

from geoseg.classes import ClassInfo
from geoseg.fs import publish_all, remove_quietly, temporary_sibling
from geoseg.raster.block_cache import bound_block_cache
from geoseg.raster.read import SceneInfo, no_georef_warning

#: GDAL compression threads for every raster geoseg writes (the temporary GeoTIFF's DEFLATE
#: blocks and the COG conversion): the client's writing keeps pace with many workers.
WRITE_THREADS = "ALL_CPUS"


#: Block size of the temporary GeoTIFFs predict writes into (and of their COGs).
SINK_BLOCK = 512


def overview_factors(width: int, height: int, block: int = SINK_BLOCK) -> list[int]:
    """Overview levels as GDAL's COG driver picks them: halve until neither side, rounded down,
    is larger than one block."""
    factors: list[int] = []
    f = 1
    while max(width // f, height // f) > block:
        f *= 2
        factors.append(f)
    return factors


class RasterSink:
    """A tiled, compressed temporary GeoTIFF written window by window, then published as a COG.

    The final path is touched only by ``os.replace`` in :meth:`commit`; anything else (an
    exception, an interrupt) leaves at most hidden temporary files, which :meth:`abort` removes.
    """

    def __init__(
        self,
        path: Path,
        scene: SceneInfo,
        count: int,
        nodata: int | None,
        classes: Sequence[ClassInfo] | None = None,
        tags: dict[str, str] | None = None,
        band_descriptions: Sequence[str] | None = None,
        overview_resampling: str = "MODE",
        dtype: str = "uint8",
    ) -> None:
        self.path = path
        bound_block_cache()
        self.scene = scene
        self.overview_resampling = overview_resampling
        self.tmp = temporary_sibling(path)
        self.cog_tmp: Path | None = None
        est_bytes = scene.pixels * count * np.dtype(dtype).itemsize
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": scene.width,
            "height": scene.height,
            "count": count,
            "dtype": dtype,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": SINK_BLOCK,
            "blockysize": SINK_BLOCK,
            "compress": "deflate",
            "predictor": 1,
            "BIGTIFF": "YES" if est_bytes > 3_500_000_000 else "IF_SAFER",
            "interleave": "band",
            "num_threads": WRITE_THREADS,
        }
        if scene.georeferenced:
            profile["crs"] = scene.crs
            profile["transform"] = scene.transform
        with no_georef_warning():
            self._dst = rasterio.open(self.tmp, "w", **profile)
        if classes is not None:
            cmap = {c.value: (*c.color, 255) for c in classes}
            if nodata is not None:
                cmap.setdefault(nodata, (0, 0, 0, 0))
            self._dst.write_colormap(1, cmap)
            self._dst.colorinterp = [ColorInterp.palette]
        if tags:
            self._dst.update_tags(**tags)
        for i, desc in enumerate(band_descriptions or (), start=1):
            self._dst.set_band_description(i, desc)

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write (bands, h, w) or (h, w) values of the sink's dtype into ``window``."""
        if array.ndim == 2:
            array = array[None]
        self._dst.write(array, window=window)

    def commit(self) -> Path:
        """Close the temporary file, convert it to a COG, and rename it onto the final path."""
        publish_all([(self.prepare(), self.path)])
        return self.path

    def prepare(self) -> Path:
        """Close the temporary file and convert it to a hidden COG beside the output; returns it.
        Nothing at the final path changes yet (see :func:`publish_all`)."""
        self._dst.close()
        self.cog_tmp = temporary_sibling(self.path)
        with rasterio.Env(GDAL_NUM_THREADS=WRITE_THREADS), no_georef_warning():
            # overviews built into the temporary file first, which the COG driver then copies:
            # the same levels and pixels as its own, and the step's rise of peak memory at 4,096²
            # 20 MB instead of 36-38 MB
            factors = overview_factors(self.scene.width, self.scene.height)
            if factors:
                with rasterio.open(self.tmp, "r+") as dst:
                    dst.build_overviews(factors, Resampling[self.overview_resampling.lower()])
            rasterio.shutil.copy(
                str(self.tmp),
                str(self.cog_tmp),
                driver="COG",
                COMPRESS="DEFLATE",
                NUM_THREADS=WRITE_THREADS,
                BLOCKSIZE=SINK_BLOCK,
                OVERVIEW_RESAMPLING=self.overview_resampling,
                BIGTIFF="IF_SAFER",
            )
        remove_quietly(self.tmp)
        with contextlib.suppress(FileNotFoundError):
            Path(str(self.cog_tmp) + ".aux.xml").unlink()
        return self.cog_tmp

    def abort(self) -> None:
        """Drop everything written so far."""
        with contextlib.suppress(Exception):
            self._dst.close()
        remove_quietly(self.tmp, self.cog_tmp)


@contextlib.contextmanager
def open_sinks(
    *sinks_factories: Any,
    extra: list[tuple[Path, Path]] | None = None,
    then: Callable[[], Any] | None = None,
) -> Iterator[list[RasterSink]]:
    """Create sinks; commit all on success, abort all on any failure (including KeyboardInterrupt).

    The commit is all or nothing (:func:`publish_all`), together with ``extra`` staged files
    (temporary, final) the caller adds while writing, and ``then``, run once they are in place:
    if it fails, every output is put back as it was."""
    sinks: list[RasterSink] = []
    extra = extra if extra is not None else []
    try:
        for factory in sinks_factories:
            if factory is not None:
                sinks.append(factory())
        yield sinks
    except BaseException:
        for s in sinks:
            s.abort()
        remove_quietly(*(tmp for tmp, _ in extra))
        raise
    else:
        try:
            # every COG is made before any output is touched: a failure here (a full disk)
            # leaves the previous outputs exactly as they were
            staged = [(s.prepare(), s.path) for s in sinks]
            publish_all(staged + list(extra), then)
        except BaseException:
            for s in sinks:
                s.abort()
            remove_quietly(*(tmp for tmp, _ in extra))
            raise
