"""Rasters as compressed TIFF tiles: encoding on the workers, overview reduction, and the tags
of the COG they are assembled into (:func:`geoseg.raster.tiff.write_cog`).

GDAL's GTiff driver does every compression, here in memory: a worker writes its region of a
raster (aligned to the COG's block lattice) into an in-memory GeoTIFF and hands back the tiles'
bytes, which are what the COG holds. Overviews are 2 x 2 reductions, level by level (mode of
the valid pixels for classes, their rounded mean for probabilities), so a region aligned to
``2**k`` blocks reduces on its own exactly as the whole raster would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile

from geoseg.raster.tiff import TILE_BYTE_COUNTS, TILE_OFFSETS, Tag, read_ifds, tile_bytes

#: Block size of every COG geoseg writes (GDAL's COG default).
BLOCK = 512

Compression = Literal["deflate", "zstd", "lzw", "none"]
Reduction = Literal["mode", "average"]


@dataclass(frozen=True)
class Encoding:
    """How a raster's tiles are compressed: GDAL's codec, its level (None: GDAL's default) and
    predictor (2, horizontal differencing, helps smooth values such as probabilities)."""

    compress: Compression = "deflate"
    level: int | None = None
    predictor: int = 1

    def creation_options(self) -> dict[str, Any]:
        """GTiff creation options for this encoding."""
        opts: dict[str, Any] = {"compress": self.compress if self.compress != "none" else "none"}
        if self.compress != "none":
            opts["predictor"] = self.predictor
        if self.level is not None:
            key = {"deflate": "zlevel", "zstd": "zstd_level", "lzw": None, "none": None}[
                self.compress
            ]
            if key:
                opts[key] = self.level
        return opts


@dataclass(frozen=True)
class RasterSpec:
    """One output raster: bands, type, nodata, how overviews reduce, and its encoding."""

    name: str
    count: int
    dtype: str
    nodata: int | None
    reduction: Reduction
    encoding: Encoding = Encoding()


def encode_tiles(array: np.ndarray, spec: RasterSpec, threads: int = 1) -> list[bytes]:
    """The compressed tiles of ``array`` (bands, height, width), row-major, as a TIFF of
    ``BLOCK`` tiles with pixel interleaving holds them; edge tiles are padded by GDAL."""
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": spec.dtype,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "interleave": "pixel",
        "num_threads": threads,
        **spec.encoding.creation_options(),
    }
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    from geoseg.raster.read import no_georef_warning

    with no_georef_warning(), MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(np.ascontiguousarray(array, dtype=spec.dtype))
        data = mem.read()
    return tile_bytes(data, read_ifds(data)[0])


def reduce2(array: np.ndarray, reduction: Reduction, nodata: int | None) -> np.ndarray:
    """One overview level from the one below: each output pixel reduces a 2 x 2 block (fewer at
    an odd edge) of (bands, height, width) values to their mode or rounded mean, leaving out
    ``nodata``; a block of nodata alone stays nodata. The size is halved, rounded up.

    Works through :data:`REDUCE_ROWS` output rows at a time with small integer types, so the
    extra memory is a few bytes per output pixel of one band of rows, whatever the array."""
    if array.ndim == 2:
        return reduce2(array[None], reduction, nodata)[0]
    c, h, w = array.shape
    hh, ww = -(-h // 2), -(-w // 2)
    out = np.empty((c, hh, ww), array.dtype)
    for top in range(0, hh, REDUCE_ROWS):
        rows = array[:, 2 * top : 2 * (top + REDUCE_ROWS)]
        out[:, top : top + REDUCE_ROWS] = _reduce_rows(rows, reduction, nodata, ww)
    return out


#: Output rows :func:`reduce2` makes at a time.
REDUCE_ROWS = 128


def _reduce_rows(
    array: np.ndarray, reduction: Reduction, nodata: int | None, ww: int
) -> np.ndarray:
    c, h, w = array.shape
    hh = -(-h // 2)
    fill = nodata if nodata is not None else 0
    padded = np.full((c, hh * 2, ww * 2), fill, array.dtype)
    padded[:, :h, :w] = array
    valid = np.zeros((hh * 2, ww * 2), bool)
    valid[:h, :w] = True
    if nodata is not None:
        valid &= np.all(padded != nodata, axis=0)
    quads = [padded[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]
    oks = [valid[i::2, j::2] for i in (0, 1) for j in (0, 1)]
    n = sum(ok.astype(np.uint8) for ok in oks)
    if reduction == "average":
        wide = np.uint32 if array.dtype.itemsize > 1 else np.uint16  # 4 x 255 fits 16 bits
        total = sum(np.where(ok, q, 0).astype(wide) for q, ok in zip(quads, oks))
        out = (total + n // 2) // np.maximum(n, 1)
        return np.where(n > 0, out, fill).astype(array.dtype)
    # mode: each of the four values counts its equals among the valid ones; the first of the
    # most frequent wins (row-major order within the block)
    best, best_count = quads[0], np.zeros(oks[0].shape, np.uint8)
    for q, ok in zip(quads, oks):
        same = sum((np.all(q == r, axis=0) & o).astype(np.uint8) for r, o in zip(quads, oks)) * ok
        better = same > best_count
        best = np.where(better, q, best)
        best_count = np.where(better, same, best_count)
    return np.where(n > 0, best, fill).astype(array.dtype)


def overview_count(width: int, height: int) -> int:
    """Overview levels as GDAL's COG driver makes them: halve until the image fits one block."""
    n = 0
    while max(width, height) > BLOCK:
        width, height = -(-width // 2), -(-height // 2)
        n += 1
    return n


def cog_tags(
    spec: RasterSpec,
    width: int,
    height: int,
    *,
    crs: Any = None,
    transform: Any = None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    tags: dict[str, str] | None = None,
    descriptions: Sequence[str] | None = None,
) -> dict[int, Tag]:
    """The full-resolution IFD's tags of the COG (georeferencing, colour table, metadata, band
    descriptions, encoding), as GDAL writes them, without tile offsets: from an empty sparse
    GeoTIFF of that size made in memory."""
    from geoseg.raster.read import no_georef_warning

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": spec.count,
        "dtype": spec.dtype,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "interleave": "pixel",
        "sparse_ok": True,
        "bigtiff": "no",
        **spec.encoding.creation_options(),
    }
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform
    with no_georef_warning(), MemoryFile() as mem:
        with mem.open(**profile) as dst:
            if colormap:
                dst.write_colormap(1, colormap)
                dst.colorinterp = [ColorInterp.palette]
            if tags:
                dst.update_tags(**tags)
            for i, desc in enumerate(descriptions or (), start=1):
                dst.set_band_description(i, desc)
        data = mem.read()
    ifd = read_ifds(data)[0]
    return {c: t for c, t in ifd.items() if c not in (TILE_OFFSETS, TILE_BYTE_COUNTS)}


__all__ = [
    "BLOCK",
    "Encoding",
    "RasterSpec",
    "cog_tags",
    "encode_tiles",
    "overview_count",
    "reduce2",
]


@dataclass(frozen=True)
class RasterMeta:
    """An output raster's spec and what GIS software shows of it (colour table, metadata)."""

    spec: RasterSpec
    #: class value -> RGBA, for a class raster
    colormap: tuple[tuple[int, tuple[int, int, int, int]], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    descriptions: tuple[str, ...] = ()

    def tiff_tags(self, width: int, height: int, crs: Any, transform: Any) -> Any:
        """The full-resolution IFD tags of this raster's COG at that size and place."""
        return cog_tags(
            self.spec,
            width,
            height,
            crs=crs,
            transform=transform,
            colormap=dict(self.colormap) or None,
            tags=dict(self.tags),
            descriptions=self.descriptions,
        )
