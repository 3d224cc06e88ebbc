"""How predict reads a scene: tasks down column bands, a block cache sized to that order (each
block decoded about once, the cache the same at any scene width) with a share for each scene
whose tasks take turns in a process, GDAL's file cache only for network files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.transform import Affine

from geoseg.paths import is_remote
from geoseg.prediction.plan import block_cache_need
from geoseg.raster.block_cache import BLOCK_CACHE_MIN, BlockCacheBound, bound_block_cache
from geoseg.raster.read import SceneInfo, read_env, read_mirrored
from geoseg.tiling import Tile, TileGrid


def scene_info(
    width: int, height: int, block: tuple[int, int], count: int = 3, dtype: str = "uint16"
) -> SceneInfo:
    return SceneInfo(
        path="scene.tif",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs=None,
        transform=Affine.identity(),
        nodata=None,
        descriptions=(None,) * count,
        block_shape=block,
        georeferenced=False,
    )


@pytest.mark.parametrize("column_bands", [True, False])
def test_groups_cover_every_tile_once_in_balanced_runs_of_one_row(column_bands: bool) -> None:
    grid = TileGrid.create(3000, 5000, 512, 48, 8)  # 8 rows, 13 columns
    groups = grid.groups(4, column_bands)
    assert sorted(t.index for g in groups for t in g) == list(range(len(grid)))
    for g in groups:
        assert len({t.grid_row for t in g}) == 1
        assert [t.grid_col for t in g] == list(range(g[0].grid_col, g[0].grid_col + len(g)))
    sizes = {len(g) for g in groups}
    assert max(sizes) <= 4 and max(sizes) - min(sizes) <= 1  # 13 columns: bands of 3, 3, 4, 3
    starts = [(g[0].grid_row, g[0].grid_col) for g in groups]
    if column_bands:  # down one band, then the next
        assert starts == sorted(starts, key=lambda rc: (rc[1], rc[0]))
        assert starts[1] == (1, 0)
    else:
        assert starts == sorted(starts)
        assert starts[1] == (0, 3)


def test_block_cache_need_is_the_same_at_any_scene_width() -> None:
    needs = [
        block_cache_need(
            scene_info(size, size, (512, 512)), TileGrid.create(size, size, 512, 48, 8), 6, 1
        )
        for size in (4096, 16384, 65536)
    ]
    assert needs[0] == needs[1] == needs[2]
    # 7 x 2 blocks of 3 x 512² uint16 pixels, 6 x 2 output blocks, and half as much again
    assert needs[0] == (7 * 2 * 512 * 512 * 6 + 6 * 2 * 512 * 512) * 3 // 2
    # probabilities of 8 classes add 8 bytes per output pixel
    grid = TileGrid.create(16384, 16384, 512, 48, 8)
    assert block_cache_need(scene_info(16384, 16384, (512, 512)), grid, 6, 9) > needs[0]


def test_block_cache_need_of_a_striped_scene_holds_a_row_of_tiles() -> None:
    grid = TileGrid.create(16384, 16384, 512, 48, 8)
    need = block_cache_need(scene_info(16384, 16384, (8, 16384)), grid, 6, 1, column_bands=False)
    assert need >= (512 + 8) * 16384 * 6  # the strips under one row of tiles, whole width


def _rchar() -> int:
    with open("/proc/thread-self/io") as f:  # this thread's reads only
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def write_random_scene(path: Path, size: int, block: int, seed: int = 0) -> Path:
    """Random pixels (DEFLATE cannot shrink them, so bytes read count blocks decoded)."""
    data = np.random.default_rng(seed).integers(0, 4000, size=(3, size, size), dtype=np.uint16)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint16",
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
    ) as dst:
        dst.write(data)
    return path


def read_groups(src: rasterio.DatasetReader, groups: list[list[Tile]]) -> None:
    """Read each group's windows as one task reads them (its row of tiles, mirrored at the edges)."""
    for g in groups:
        first, last = g[0], g[-1]
        read_mirrored(
            src,
            [1, 2, 3],
            first.input_row,
            first.input_col,
            first.input_height,
            last.input_col + last.input_width - first.input_col,
        )


#: The scenes the read-counting tests write: random pixels, 128² blocks, 128² tiles.
SIZE, BLOCK = 2048, 128
needs_proc_io = pytest.mark.skipif(
    not Path("/proc/thread-self/io").exists(), reason="counts bytes read through /proc (Linux)"
)


@contextlib.contextmanager
def cache_restored() -> Iterator[None]:
    """GDAL's block cache size as it was, whatever the test set it to."""
    old = get_gdal_config("GDAL_CACHEMAX")
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", old)


def grid_and_need() -> tuple[TileGrid, int]:
    """The tiles of a SIZE² scene and the block cache predict's plan gives them (6 per task)."""
    grid = TileGrid.create(SIZE, SIZE, 128, 16, 8)
    return grid, block_cache_need(scene_info(SIZE, SIZE, (BLOCK, BLOCK)), grid, 6, 0)


@needs_proc_io
def test_reading_in_column_bands_decodes_each_block_about_once(tmp_path: Path) -> None:
    """With the cache at what the plan says it needs, going down column bands reads the file
    little more than once; row by row, the same cache reads it more than twice."""
    path = write_random_scene(tmp_path / "scene.tif", SIZE, BLOCK)
    grid, need = grid_and_need()
    factors = {}
    with cache_restored():
        for column_bands in (True, False):
            set_gdal_config("GDAL_CACHEMAX", need)
            with rasterio.Env(), rasterio.open(path) as src:
                before = _rchar()
                read_groups(src, grid.groups(6, column_bands))
                factors[column_bands] = (_rchar() - before) / path.stat().st_size
    assert factors[True] < 1.5, factors
    assert factors[False] > 2.0, factors


def test_block_cache_adds_the_shares_of_scenes_whose_reads_interleave() -> None:
    sizes: list[int] = []
    bound = BlockCacheBound(sizes.append, minimum=0, maximum=10**9)
    for scene, need in (("a", 30), ("a", 30), ("b", 50), ("b", 50), ("c", 40)):
        bound.grow(need, scene)  # one scene after another: the largest need
    assert bound.size == 50
    bound = BlockCacheBound(sizes.append, minimum=0, maximum=10**9)
    for scene, need in (("a", 30), ("b", 50), ("a", 30)):  # b read between two reads of a
        bound.grow(need, scene)
    assert bound.size == 80
    bound.grow(40, "c")
    bound.grow(50, "b")  # a and c read since b's last read
    assert bound.size == 120
    bound.grow(10)  # without a scene: its need alone, and the cache never shrinks
    assert bound.size == 120
    assert sizes[-1] == 120
    assert BlockCacheBound(sizes.append, minimum=0, maximum=100).grow(70, "a") == 70
    capped = BlockCacheBound(sizes.append, minimum=0, maximum=100)
    for scene in "aba":
        capped.grow(70, scene)
    assert capped.size == 100


@needs_proc_io
def test_interleaved_scenes_each_decode_their_blocks_about_once(tmp_path: Path) -> None:
    """A batch's scenes in flight: tasks of two scenes alternate in one process. With each
    scene's share the files are read little more than once; with the cache one scene needs,
    each scene's blocks push the other's out and the files are read more than twice."""
    paths = [write_random_scene(tmp_path / f"scene{i}.tif", SIZE, BLOCK, seed=i) for i in range(2)]
    grid, need = grid_and_need()
    factors = {}
    with cache_restored():
        for shares in (True, False):
            bound = BlockCacheBound(minimum=0)
            with rasterio.Env(), rasterio.open(paths[0]) as a, rasterio.open(paths[1]) as b:
                before = _rchar()
                for g in grid.groups(6):
                    for src in (a, b):
                        bound.grow(need, src.name if shares else None)  # as the tile reader does
                        read_groups(src, [g])
                factors[shares] = (_rchar() - before) / sum(p.stat().st_size for p in paths)
    assert factors[True] < 1.5, factors
    assert factors[False] > 2.0, factors


def test_block_cache_only_grows() -> None:
    bound_block_cache(BLOCK_CACHE_MIN + 2**20)
    grown = get_gdal_config("GDAL_CACHEMAX")
    bound_block_cache(BLOCK_CACHE_MIN)  # shrinking would flush blocks another thread is writing
    assert get_gdal_config("GDAL_CACHEMAX") == grown
    assert int(grown) >= BLOCK_CACHE_MIN + 2**20


@pytest.mark.parametrize(
    ("path", "remote"),
    [
        ("/data/scene.tif", False),
        ("/vsizip/scenes.zip/scene.tif", False),
        ("https://example.com/scene.tif", True),
        ("/vsicurl/https://example.com/a.tif", True),
        ("/vsis3/bucket/scene.tif", True),
        ("s3://bucket/scene.tif", True),
    ],
)
def test_gdal_file_cache_only_for_network_scenes(path: str, remote: bool) -> None:
    assert is_remote(path) is remote
    with read_env(path):
        assert bool(get_gdal_config("VSI_CACHE")) is remote
