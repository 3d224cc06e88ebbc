"""geoseg stats: pixel counts equal a bincount, areas the valid area, zones by exact covered fraction."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio.transform import from_origin

from geoseg.classes import CLASS_NODATA, ClassInfo, class_tags
from geoseg.errors import GeosegWarning, OutputError, ResultsError
from geoseg.results.areas import row_areas
from geoseg.results.stats import class_column, stats
from tests.conftest import write_raster

CRS_WKT = rasterio.crs.CRS.from_epsg(32633).to_wkt()
CLASSES = [
    ClassInfo(0, "water", (0, 0, 255)),
    ClassInfo(1, "forest", (0, 128, 0)),
    ClassInfo(2, "farmland", (255, 255, 0)),
    ClassInfo(3, "built-up", (255, 0, 0)),
]


def class_raster(
    path: Path,
    array: np.ndarray,
    crs: str = "EPSG:32633",
    transform: Any = None,
    tagged: bool = True,
) -> Path:
    """A geoseg-like class raster: uint8, nodata 255, class tags and colour table."""
    write_raster(path, array.astype(np.uint8), crs=crs, transform=transform, nodata=CLASS_NODATA)
    if tagged:
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(**class_tags(CLASSES, "test"))
            dst.write_colormap(1, {c.value: (*c.color, 255) for c in CLASSES})
    return path


def random_classes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a = np.kron(rng.integers(0, 4, (h // 8 + 1, w // 8 + 1)), np.ones((8, 8), int))[:h, :w]
    a[rng.random((h, w)) < 0.05] = CLASS_NODATA
    return a


def write_zones(path: Path, geoms: list[Any], names: list[str], crs: str = "EPSG:32633") -> Path:
    pyogrio.raw.write(
        str(path),
        shapely.to_wkb(np.array(geoms, dtype=object)),
        [np.array(names, dtype=object)],
        ["name"],
        crs=crs,
        geometry_type="Polygon",
        driver="GPKG",
    )
    return path


def test_counts_equal_bincount_and_areas_the_valid_area(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 300, 260)  # several blocks of 128 with ragged edges
    path = class_raster(tmp_path / "c.tif", a)
    res = stats(path, tmp_path / "s.csv", client=dask_client, block_size=128)
    counts = np.bincount(a[a != CLASS_NODATA].ravel(), minlength=4)
    assert {r["class"]: r["pixels"] for r in res.rows} == {v: int(counts[v]) for v in range(4)}
    valid_area = (a != CLASS_NODATA).sum() * 100.0
    assert sum(r["area_m2"] for r in res.rows) == pytest.approx(valid_area, rel=1e-9)
    assert sum(r["share"] for r in res.rows) == pytest.approx(1.0)
    with open(tmp_path / "s.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["class_name"] for r in table] == ["water", "forest", "farmland", "built-up"]
    assert [int(r["pixels"]) for r in table] == counts.tolist()
    assert float(table[1]["area_ha"]) == pytest.approx(counts[1] * 100 / 1e4)


def test_geographic_rows_are_measured_on_the_ellipsoid() -> None:
    from pyproj import Geod
    from rasterio.crs import CRS

    transform = from_origin(10.0, 60.0, 0.01, 0.01)
    areas = row_areas(CRS.from_epsg(4326), transform, 100)
    # the same cell as a polygon densified along its parallels (geodesic edges, nearly the parallels)
    lat0, lat1 = 60.0 - 0.01 * 50, 60.0 - 0.01 * 51
    lons = np.linspace(10.0, 10.01, 200)
    poly_lon = np.concatenate([lons, lons[::-1]])
    poly_lat = np.concatenate([np.full(200, lat0), np.full(200, lat1)])
    geod_area = abs(Geod(ellps="WGS84").polygon_area_perimeter(poly_lon, poly_lat)[0])
    assert areas[50] == pytest.approx(geod_area, rel=1e-6)
    assert areas[0] < areas[-1]  # pixels grow towards the equator


def test_zones_partition_the_valid_area_by_exact_fractions(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 200, 200)
    path = class_raster(tmp_path / "c.tif", a)
    x0, y1 = 300000.0, 5800000.0
    x1, y0 = x0 + 2000, y1 - 2000
    # three zones that split the raster along lines through pixels, in another CRS
    xm, ym = x0 + 777.7, y1 - 1234.5
    geoms = [
        shapely.box(x0 - 50, ym, xm, y1 + 50),
        shapely.box(xm, ym, x1 + 50, y1 + 50),
        shapely.box(x0 - 50, y0 - 50, x1 + 50, ym),
    ]
    zones = write_zones(tmp_path / "z.gpkg", geoms, ["nw", "ne", "s"])
    res = stats(
        path, tmp_path / "s.csv", zones=zones, zone_field="name", client=dask_client, block_size=64
    )
    valid_area = (a != CLASS_NODATA).sum() * 100.0
    assert sum(r["area_m2"] for r in res.rows) == pytest.approx(valid_area, rel=1e-6)
    pixels = {v: sum(r["pixels"] for r in res.rows if r["class"] == v) for v in range(4)}
    counts = np.bincount(a[a != CLASS_NODATA].ravel(), minlength=4)
    assert pixels == pytest.approx({v: float(counts[v]) for v in range(4)}, rel=1e-9)
    # the north-west zone: a fraction of the pixels on its cut lines
    col, row = 77.77, 123.45
    nw = a[: math.ceil(row), : math.ceil(col)].astype(float)
    w = np.ones(nw.shape)
    w[:, -1] *= col - math.floor(col)
    w[-1, :] *= row - math.floor(row)
    valid = nw != CLASS_NODATA
    expect = np.bincount(nw[valid].astype(int), weights=w[valid], minlength=4)
    got = [r["pixels"] for r in res.rows if r["name"] == "nw"]
    assert got == pytest.approx(expect.tolist(), rel=1e-9)
    shares = [r["share"] for r in res.rows if r["name"] == "s"]
    assert sum(shares) == pytest.approx(1.0)


def test_zones_in_a_geographic_crs_are_reprojected(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    from pyproj import Transformer

    a = random_classes(rng, 100, 100)
    path = class_raster(tmp_path / "c.tif", a)
    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    # a zone far larger than the raster, in degrees: every valid pixel falls in it
    lon, lat = tr.transform(300500.0, 5799500.0)
    zones = write_zones(
        tmp_path / "z.gpkg",
        [shapely.box(lon - 1, lat - 1, lon + 1, lat + 1)],
        ["all"],
        crs="EPSG:4326",
    )
    res = stats(path, None, zones=zones, zone_field="name", client=dask_client)
    counts = np.bincount(a[a != CLASS_NODATA].ravel(), minlength=4)
    assert [r["pixels"] for r in res.rows] == pytest.approx(counts.tolist(), rel=1e-9)


def test_gpkg_output_keeps_zone_geometry_and_adds_a_column_per_class(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 64, 64)
    path = class_raster(tmp_path / "c.tif", a)
    geoms = [
        shapely.box(300000, 5799700, 300640, 5800000),
        shapely.box(300000, 5799360, 300640, 5799700),
    ]
    zones = write_zones(tmp_path / "z.gpkg", geoms, ["top", "bottom"])
    stats(path, tmp_path / "out.gpkg", zones=zones, zone_field="name", client=dask_client)
    meta, _, wkb, data = pyogrio.raw.read(str(tmp_path / "out.gpkg"))
    fields = list(meta["fields"])
    assert fields == ["name", *(class_column(c.name) for c in CLASSES), "valid_m2"]
    assert shapely.equals(shapely.from_wkb(wkb), np.array(geoms, dtype=object)).all()
    assert data[-1][0] == pytest.approx((a[:30] != CLASS_NODATA).sum() * 100.0)


def test_parquet_output(tmp_path: Path, rng: np.random.Generator, dask_client: Any) -> None:
    import pyarrow.parquet as pq

    a = random_classes(rng, 40, 40)
    stats(class_raster(tmp_path / "c.tif", a), tmp_path / "s.parquet", client=dask_client)
    table = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [r["pixels"] for r in table] == np.bincount(
        a[a != CLASS_NODATA].ravel(), minlength=4
    ).tolist()


def test_raster_without_metadata_is_counted_by_value(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 40, 40)
    path = class_raster(tmp_path / "c.tif", a, tagged=False)
    with pytest.warns(GeosegWarning, match="counting by value"):
        res = stats(path, client=dask_client)
    assert [r["class_name"] for r in res.rows] == ["0", "1", "2", "3"]


def test_bad_input_is_one_line_before_any_work(tmp_path: Path, rng: np.random.Generator) -> None:
    a = random_classes(rng, 40, 40)
    path = class_raster(tmp_path / "c.tif", a)
    geoms = [shapely.box(300000, 5799700, 300640, 5800000)]
    zones = write_zones(tmp_path / "z.gpkg", geoms, ["top"])
    with pytest.raises(ResultsError, match="no field 'district'; their fields are: name"):
        stats(path, zones=zones, zone_field="district")
    with pytest.warns(UserWarning, match="crs"):
        nocrs = write_zones(tmp_path / "nocrs.gpkg", geoms, ["top"], crs=None)  # type: ignore[arg-type]
    with pytest.raises(ResultsError, match="have no CRS"):
        stats(path, zones=nocrs, zone_field="name")
    far = write_zones(tmp_path / "far.gpkg", [shapely.box(0, 0, 10, 10)], ["x"])
    with pytest.raises(ResultsError, match="overlaps the raster"):
        stats(path, zones=far)
    (tmp_path / "s.csv").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        stats(path, tmp_path / "s.csv")
    with pytest.raises(ResultsError, match="unknown stats output format"):
        stats(path, tmp_path / "s.xlsx")
    with pytest.raises(ResultsError, match="give --zones"):
        stats(path, tmp_path / "s.gpkg")
    assert (tmp_path / "s.csv").read_text() == "mine"


def test_cli(tmp_path: Path, rng: np.random.Generator) -> None:
    from geoseg.cli.main import cli

    a = random_classes(rng, 40, 40)
    path = class_raster(tmp_path / "c.tif", a)
    r = CliRunner().invoke(
        cli, ["stats", str(path), "-o", str(tmp_path / "s.csv"), "--workers", "1", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert (
        (tmp_path / "s.csv")
        .read_text()
        .startswith("class,class_name,pixels,area_m2,area_ha,share\n")
    )
    r = CliRunner().invoke(cli, ["stats", str(path), "-o", str(tmp_path / "s.csv"), "--quiet"])
    assert r.exit_code != 0 and "exists; pass --overwrite" in r.output


def test_zone_fractions_equal_exactextract_for_overlapping_zones_with_holes(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    """The area-accumulation coverage against exactextract's per-pixel coverage (float32, so
    1e-6): random blobs that overlap, one with a hole and a multi-part one, on ragged blocks;
    an internal mask instead of nodata."""
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    h, w = 150, 170
    a = random_classes(rng, h, w)
    a[a == CLASS_NODATA] = 2
    invalid = rng.random((h, w)) < 0.05
    path = tmp_path / "c.tif"
    write_raster(path, a.astype(np.uint8), crs="EPSG:32633")
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(**class_tags(CLASSES, "test"))
        dst.write_mask(np.where(invalid, 0, 255).astype(np.uint8))
    with rasterio.open(path) as src:
        transform = src.transform
    x0, y1 = transform.c, transform.f
    geoms = []
    for i in range(6):
        c = shapely.Point(x0 + rng.uniform(0, w * 10), y1 - rng.uniform(0, h * 10))
        g = c.buffer(rng.uniform(100, 600), quad_segs=int(rng.integers(2, 9)))
        if i == 1:
            g = g.difference(c.buffer(60))
        geoms.append(g)
    geoms.append(
        shapely.MultiPolygon(
            [
                shapely.box(x0 + 33.3, y1 - 400, x0 + 250, y1 - 17.5),
                shapely.box(x0 + 1200, y1 - 1490, x0 + 1650, y1 - 1100),
            ]
        )
    )
    zones = tmp_path / "z.gpkg"
    pyogrio.raw.write(
        str(zones),
        shapely.to_wkb(
            np.array([shapely.MultiPolygon(shapely.get_parts(g)) for g in geoms], dtype=object)
        ),
        [np.array([f"z{i}" for i in range(len(geoms))], dtype=object)],
        ["name"],
        crs="EPSG:32633",
        geometry_type="MultiPolygon",
        driver="GPKG",
    )
    res = stats(path, None, zones=zones, zone_field="name", client=dask_client, block_size=64)
    src = NumPyRasterSource(a.astype(np.float64), x0, y1 - h * 10, x0 + w * 10, y1)
    feats = [
        {"type": "Feature", "properties": {"i": i}, "geometry": shapely.geometry.mapping(g)}
        for i, g in enumerate(geoms)
    ]
    valid = ~invalid.ravel()
    for f in exact_extract(src, feats, ["cell_id", "coverage"], include_cols=["i"]):
        cells = np.asarray(f["properties"]["cell_id"], dtype=np.int64)
        cover = np.asarray(f["properties"]["coverage"], dtype=np.float64)
        keep = valid[cells]
        expect = np.bincount(a.ravel()[cells[keep]], weights=cover[keep], minlength=4)
        got = [r["pixels"] for r in res.rows if r["name"] == f"z{f['properties']['i']}"]
        assert got == pytest.approx(expect.tolist(), rel=1e-6, abs=1e-5)


def test_zones_on_a_geographic_raster_weigh_rows_by_their_area(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 120, 90)
    transform = from_origin(10.0, 60.0, 0.01, 0.01)
    path = class_raster(tmp_path / "c.tif", a, crs="EPSG:4326", transform=transform)
    # two zones splitting the raster at a latitude through the middle of row 47
    cut = 60.0 - 0.01 * 47.5
    zones = write_zones(
        tmp_path / "z.gpkg",
        [shapely.box(9, cut, 12, 61), shapely.box(9, 58, 12, cut)],
        ["n", "s"],
        crs="EPSG:4326",
    )
    res = stats(path, None, zones=zones, zone_field="name", client=dask_client, block_size=64)
    from rasterio.crs import CRS

    areas = row_areas(CRS.from_epsg(4326), transform, 120)
    valid = a != CLASS_NODATA
    per_row = valid.sum(axis=1) * areas
    whole = stats(path, client=dask_client, block_size=64)
    assert sum(r["area_m2"] for r in res.rows) == pytest.approx(per_row.sum(), rel=1e-9)
    assert sum(r["area_m2"] for r in whole.rows) == pytest.approx(per_row.sum(), rel=1e-9)
    north = per_row[:47].sum() + 0.5 * valid[47].sum() * areas[47]
    assert sum(r["area_m2"] for r in res.rows if r["name"] == "n") == pytest.approx(north, rel=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32"])
def test_any_integer_pixels_are_counted_by_value(
    tmp_path: Path, rng: np.random.Generator, dtype: str
) -> None:
    """Negative values, values the metadata does not name, nodata and a mask, in 8 to 32 bits,
    with and without a zone over the whole block: the kernel's counts equal a bincount of the
    valid pixels (negative values dropped: they are no classes)."""
    from geoseg.results.counting import StatsTask, count_block
    from geoseg.results.coverage import polygon_edges

    h, w = 37, 101  # rows and a width that are not multiples of anything
    info = np.iinfo(dtype)
    nodata = int(info.min) if info.min < 0 else int(info.max)
    a = rng.integers(0, 4, (h, w)).astype(dtype)
    a[rng.random(a.shape) < 0.1] = 9 if info.max < 300 else 300  # not a class of the metadata
    a[rng.random(a.shape) < 0.1] = nodata
    if info.min < 0:
        a[rng.random(a.shape) < 0.1] = -3
    valid = rng.random(a.shape) < 0.9
    path = tmp_path / "c.tif"
    write_raster(path, a, crs="EPSG:32633", nodata=nodata)
    with rasterio.open(path, "r+") as dst:
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
        transform = tuple(dst.transform)[:6]
    keep = valid & (a != nodata) & (a >= 0)
    values, counts = np.unique(a[keep], return_counts=True)
    whole = shapely.box(-1, -1, w + 1, h + 1)
    edges = polygon_edges(np.array([whole], dtype=object), np.zeros(1))
    xy = np.column_stack([edges.x0, edges.y0, edges.x1, edges.y1])
    base = StatsTask(
        str(path),
        0,
        0,
        h,
        w,
        CRS_WKT,
        transform,
        h,
        masked=True,
        nodata=nodata,
        values=(0, 1, 2, 3),
    )
    for task in (
        base,
        dataclasses.replace(
            base,
            edges=xy,
            edge_zones=np.column_stack([np.zeros(len(xy), np.int64), np.full(len(xy), -1)]),
        ),
    ):
        got = count_block(task)
        assert got.value.tolist() == values.tolist()
        assert got.pixels == pytest.approx(counts.astype(float), rel=1e-12)
        assert got.area == pytest.approx(counts * 100.0, rel=1e-12)


def test_a_block_counted_in_strips_equals_it_counted_whole(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from geoseg.results.counting import count_block
    from geoseg.results.stats import plan_stats
    from geoseg.results.zones import read_zones, zone_edges

    a = random_classes(rng, 100, 90)
    path = class_raster(tmp_path / "c.tif", a)
    x0, y1 = 300000.0, 5800000.0
    geoms = [
        shapely.Point(x0 + 300, y1 - 400).buffer(333),
        shapely.box(x0 + 123.4, y1 - 987.6, x0 + 876.5, y1 - 55.5),
    ]
    zones = read_zones(write_zones(tmp_path / "z.gpkg", geoms, ["a", "b"]), "name")
    with rasterio.open(path) as src:
        grid = (src.crs, src.transform, src.width, src.height)
    for edges in (zone_edges(zones, *grid), None):
        (task,), _ = plan_stats(str(path), edges, 128, (0, 1, 2, 3))
        whole = count_block(dataclasses.replace(task, strip=0))
        strips = count_block(dataclasses.replace(task, strip=16))
        assert whole.zone.tolist() == strips.zone.tolist()
        assert whole.value.tolist() == strips.value.tolist()
        assert strips.pixels == pytest.approx(whole.pixels, rel=1e-12)
        assert strips.area == pytest.approx(whole.area, rel=1e-12)


def test_blocks_are_as_few_as_keep_every_thread_busy() -> None:
    """Two blocks per thread of the cluster at least, aligned to the tiles, 2048 to 16384."""
    from geoseg.results.stats import _block_size

    assert _block_size((512, 512), 16384, 16384, 2) == 8192  # 4 blocks for 2 threads
    assert _block_size((512, 512), 16384, 16384, 8) == 4096  # 16 for 8
    assert _block_size((512, 512), 16384, 16384, 64) == 2048  # never smaller
    assert _block_size((512, 512), 10**6, 10**6, 2) == 16384  # never larger
    assert _block_size((512, 512), 1000, 1000, 2) == 2048  # one block: a small raster
    assert _block_size((1, 7000), 9000, 7000, 1) == 8192  # strips: 256-pixel multiples
    assert _block_size((384, 384), 20000, 20000, 2) == 15360  # 384 x 40, doubled from 1920
