"""Block-wise polygonization equals one pass over the whole raster; formats; clean-up; errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes

from geoseg.cli.main import cli
from geoseg.errors import OutputError, VectorizeError
from geoseg.vector.vectorize import vectorize
from tests.conftest import write_raster

T = Affine(2.0, 0, 500000, 0, -2.0, 4000000)


def whole_raster_polygons(
    arr: np.ndarray, nodata: int | None, connectivity: int, skip: tuple[int, ...] = ()
) -> list[tuple[int, Any]]:
    mask = np.ones(arr.shape, bool) if nodata is None else arr != nodata
    if skip:
        mask &= ~np.isin(arr, skip)
    return [
        (int(v), shapely.make_valid(shapely.geometry.shape(g)))
        for g, v in shapes(arr, mask=mask, connectivity=connectivity, transform=T)
    ]


def read_layer(path: Path) -> list[tuple[int, Any]]:
    meta, _, wkb, data = pyogrio.raw.read(str(path))
    cls = data[list(meta["fields"]).index("class")]
    return [(int(c), g) for c, g in zip(cls, shapely.from_wkb(wkb))]


def assert_same_polygons(got: list[tuple[int, Any]], want: list[tuple[int, Any]]) -> None:
    assert len(got) == len(want)
    for c in {c for c, _ in want}:
        ga = sorted(g.area for k, g in got if k == c)
        wa = sorted(g.area for k, g in want if k == c)
        assert ga == pytest.approx(wa), c
    key = lambda item: (item[0], round(item[1].area, 6), tuple(np.round(item[1].bounds, 6)))  # noqa: E731
    for (c1, g1), (c2, g2) in zip(sorted(got, key=key), sorted(want, key=key)):
        assert c1 == c2 and g1.is_valid and shapely.equals(g1, g2)


def tricky_raster(size: int, block: int) -> np.ndarray:
    """Rings, a spiral, a checkerboard patch and single pixels at block corners."""
    a = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    r = np.hypot(yy - c, xx - c)
    a[(r > 10) & (r < 14)] = 1
    a[(r > 30) & (r < 33)] = 2
    theta = np.arctan2(yy - c, xx - c)
    spiral = np.abs(((r - 4 * theta) % 12) - 6) < 1.5
    a[spiral & (r > 40) & (r < size / 2 - 2)] = 3
    a[:16, :16] = (np.add.outer(np.arange(16), np.arange(16)) % 2) * 4
    for k in range(block, size, block):
        a[k - 1, k - 1] = 5
        a[k, k] = 5
        a[k - 1, k] = 6
    return a


@pytest.mark.parametrize("connectivity", [4, 8])
def test_blockwise_equals_whole_raster(tmp_path: Path, dask_client: Any, connectivity: int) -> None:
    arr = tricky_raster(160, 32)
    arr[70:74, 100:140] = 255
    path = write_raster(
        tmp_path / "c.tif", arr, transform=T, nodata=255, blockxsize=32, blockysize=32
    )
    out = tmp_path / "p.gpkg"
    res = vectorize(path, out, connectivity=connectivity, block_size=32, client=dask_client)
    want = whole_raster_polygons(arr, 255, connectivity)
    got = read_layer(out)
    assert res.polygons == len(want)
    assert_same_polygons(got, want)
    holes = sum(
        len(g.geoms[0].interiors) if g.geom_type == "MultiPolygon" else len(g.interiors)
        for _, g in got
    )
    assert holes > 0


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(20, 90),
    k=st.integers(2, 4),
    conn=st.sampled_from([4, 8]),
)
def test_random_rasters_blockwise_equals_whole(
    tmp_path: Path, dask_client: Any, seed: int, size: int, k: int, conn: int
) -> None:
    rng = np.random.default_rng(seed)
    arr = np.kron(rng.integers(0, k, (size // 3 + 1, size // 3 + 1)), np.ones((3, 3), np.int64))[
        :size, :size
    ]
    arr = np.where(rng.random(arr.shape) < 0.1, rng.integers(0, k, arr.shape), arr).astype(np.uint8)
    path = write_raster(tmp_path / "r.tif", arr, transform=T, nodata=None, tiled=False)
    out = tmp_path / "r.gpkg"
    vectorize(path, out, connectivity=conn, block_size=16, client=dask_client, overwrite=True)
    assert_same_polygons(read_layer(out), whole_raster_polygons(arr, None, conn))


def test_attributes_skip_and_formats(tmp_path: Path, dask_client: Any) -> None:
    arr = tricky_raster(96, 32)
    path = write_raster(
        tmp_path / "c.tif", arr, transform=T, nodata=None, blockxsize=32, blockysize=32
    )
    for ext in (".gpkg", ".fgb", ".shp", ".parquet"):
        out = tmp_path / f"p{ext}"
        vectorize(path, out, skip_classes=(0,), block_size=32, client=dask_client)
        if ext == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(out)
            assert b"geo" in table.schema.metadata and 0 not in table.column("class").to_pylist()
            continue
        meta, _, wkb, data = pyogrio.raw.read(str(out))
        fields = list(meta["fields"])
        cls = data[fields.index("class")]
        assert 0 not in cls
        area = data[fields.index("area_m2")]
        pixels = data[fields.index("pixels")]
        np.testing.assert_allclose(area, pixels * 4.0)
        assert pyogrio.read_info(out)["crs"] == "EPSG:32633"
    geo = tmp_path / "p.geojson"
    with pytest.raises(VectorizeError, match="WGS 84"):
        vectorize(path, geo, client=dask_client)
    with pytest.raises(VectorizeError, match=r"\.fgb.*\.gpkg"):
        vectorize(path, tmp_path / "p.xyz", client=dask_client)
    with pytest.raises(OutputError, match="--overwrite"):
        vectorize(path, tmp_path / "p.gpkg", client=dask_client)
    floats = write_raster(tmp_path / "f.tif", arr.astype(np.float32), transform=T)
    with pytest.raises(VectorizeError, match="not a class raster"):
        vectorize(floats, tmp_path / "f.gpkg", client=dask_client)
    assert not (tmp_path / "f.gpkg").exists()


def test_geographic_raster_gets_geodesic_areas(tmp_path: Path, dask_client: Any) -> None:
    arr = np.zeros((40, 40), np.uint8)
    arr[10:30, 10:30] = 1
    t = Affine(0.001, 0, 10.0, 0, -0.001, 50.0)
    path = write_raster(tmp_path / "g.tif", arr, crs="EPSG:4326", transform=t)
    out = tmp_path / "g.geojson"
    vectorize(path, out, skip_classes=(0,), client=dask_client)
    meta, _, wkb, data = pyogrio.raw.read(str(out))
    area = data[list(meta["fields"]).index("area_m2")][0]
    # 0.02 deg x 0.02 deg near 50 N: about 2224 m x 1430 m
    assert 3.1e6 < area < 3.25e6


def test_min_area_and_coverage_simplify(tmp_path: Path, dask_client: Any) -> None:
    rng = np.random.default_rng(0)
    arr = np.kron(rng.integers(0, 3, (12, 12)), np.ones((8, 8), np.int64)).astype(np.uint8)
    speckle = rng.random(arr.shape) < 0.02
    arr[speckle] = 3
    path = write_raster(tmp_path / "c.tif", arr, transform=T, blockxsize=32, blockysize=32)
    out = tmp_path / "p.gpkg"
    vectorize(path, out, min_area=5 * 4.0, simplify=3.0, block_size=32, client=dask_client)
    meta, _, wkb, data = pyogrio.raw.read(str(out))
    pixels = data[list(meta["fields"]).index("pixels")]
    assert pixels.min() >= 5
    geoms = shapely.from_wkb(wkb)
    assert all(g.is_valid for g in geoms)
    assert shapely.coverage_is_valid(geoms)
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(arr.size * 4.0, rel=0.02)


def test_cli_and_predict_vector(
    tmp_path: Path, dask_client: Any, model_factory: Any, scene_factory: Any
) -> None:
    scene = scene_factory(bands=3, height=70, width=80)
    classes, probs, vec = tmp_path / "c.tif", tmp_path / "p.tif", tmp_path / "v.gpkg"
    sched = str(dask_client.scheduler.address)
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(classes),
            "--model",
            str(model_factory(in_channels=3)),
            "--probabilities",
            str(probs),
            "--vector",
            str(vec),
            "--scheduler",
            sched,
            "-q",
        ],
    )
    assert r.exit_code == 0, r.stderr
    meta, _, wkb, data = pyogrio.raw.read(str(vec), layer="polygons")
    fields = list(meta["fields"])
    assert {"class", "class_name", "area_m2", "perim_m", "mean_prob"} <= set(fields)
    mp = data[fields.index("mean_prob")]
    assert ((mp > 0) & (mp <= 1)).all()
    with rasterio.open(classes) as src:
        arr = src.read(1)
    assert sum(data[fields.index("pixels")]) == arr.size
    r = CliRunner().invoke(
        cli, ["vectorize", str(classes), "-o", str(tmp_path / "w.fgb"), "--scheduler", sched, "-q"]
    )
    assert r.exit_code == 0 and len(pyogrio.raw.read(str(tmp_path / "w.fgb"))[2]) == len(wkb)
