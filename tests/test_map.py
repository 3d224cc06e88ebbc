"""``geoseg.map`` end to end: pieces of one scene give the scene's own prediction, scenes in two
UTM zones agree with GDAL's warped mosaic, an AOI clips, order picks the newest, and every bad
input is one line before any work."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.transform import from_origin

import geoseg
import geoseg.mapping
from geoseg.classes import CLASS_NODATA
from geoseg.errors import GeosegError
from tests.conftest import random_scene, write_raster

ORIGIN = (300000.0, 5800000.0)


def read(path: Path) -> tuple[np.ndarray, Any]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def piece(path: Path, data: np.ndarray, row: int, col: int, h: int, w: int, **kw: Any) -> Path:
    """A window of ``data`` as its own file, on the whole scene's grid, 0 as nodata."""
    t = from_origin(ORIGIN[0] + col * 10, ORIGIN[1] - row * 10, 10, 10)
    return write_raster(
        path, data[:, row : row + h, col : col + w].copy(), transform=t, nodata=0, **kw
    )


@pytest.fixture
def whole(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    data = np.clip(random_scene(rng, 3, 160, 200, "uint8"), 1, 255)  # 0 is the pieces' nodata
    return write_raster(tmp_path / "whole.tif", data, transform=from_origin(*ORIGIN, 10, 10)), data


def pieces(tmp_path: Path, data: np.ndarray) -> list[Path]:
    """Overlapping pieces covering the whole scene; the first has a hole the last one covers."""
    holed = data.copy()
    holed[:, 20:40, 30:60] = 0
    return [
        piece(tmp_path / "a.tif", holed, 0, 0, 100, 120),
        piece(tmp_path / "b.tif", data, 0, 100, 100, 100),
        piece(tmp_path / "c.tif", data, 80, 0, 80, 200),
        piece(tmp_path / "d.tif", data, 10, 20, 60, 70),
    ]


@pytest.mark.parametrize("tile,cells", [(64, None), (96, 96)])
def test_pieces_of_a_scene_map_to_the_scene_exactly(
    tmp_path: Path,
    whole: tuple[Path, np.ndarray],
    model_factory: Callable[..., Path],
    dask_client: Any,
    tile: int,
    cells: int | None,
) -> None:
    scene, data = whole
    model = model_factory(in_channels=3)
    geoseg.predict(
        str(scene), str(tmp_path / "scene.tif"), model=str(model), client=dask_client, tile=tile
    )
    out = tmp_path / ("map" if cells else "map.tif")
    result = geoseg.mapping.map(
        pieces(tmp_path, data), out, model=str(model), client=dask_client, tile=tile, cells=cells
    )
    want, wt = read(tmp_path / "scene.tif")
    got, gt = read(out / "classes.vrt" if cells else out)
    assert gt == wt and got.shape == want.shape
    assert int((got != want).sum()) == 0
    assert result.extras["scenes"] == 4 and result.tasks == (6 if cells else 1)


def test_cells_read_only_the_scenes_they_reach(
    tmp_path: Path, whole: tuple[Path, np.ndarray], model_factory: Callable[..., Path]
) -> None:
    from geoseg.mapping.plan import plan_map
    from geoseg.options import PredictOptions
    from geoseg.paths import MOSAIC_PREFIX as PREFIX
    from geoseg.prediction.run import cell_tasks

    _, data = whole
    plan = plan_map(
        pieces(tmp_path, data),
        tmp_path / "map.tif",
        str(model_factory(in_channels=3)),
        PredictOptions(tile=64, cells=64),
    ).predict
    tasks = cell_tasks(plan, None)
    per_cell = [len(json.loads(t.tiles.scene[len(PREFIX) :])["scenes"]) for t in tasks]
    assert len(tasks) == 12 and min(per_cell) < 4 and max(per_cell) <= 4


def zone_scene(path: Path, rng: np.random.Generator, epsg: int, lon: float, lat: float) -> Path:
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    data = np.clip(random_scene(rng, 3, 120, 120, "uint8"), 1, 255)
    return write_raster(
        path, data, crs=f"EPSG:{epsg}", transform=from_origin(round(x), round(y), 10, 10), nodata=0
    )


def test_two_utm_zones_agree_with_gdals_warped_mosaic(
    tmp_path: Path,
    rng: np.random.Generator,
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    from rasterio.warp import Resampling, reproject

    west = zone_scene(tmp_path / "west.tif", rng, 32633, 17.99, 52.0)  # zone 33 ends at 18 E
    east = zone_scene(tmp_path / "east.tif", rng, 32634, 17.995, 52.003)
    model = model_factory(in_channels=3)
    with pytest.raises(GeosegError, match="different CRSs.*give --crs"):
        geoseg.mapping.map([west, east], tmp_path / "x.tif", model=str(model), client=dask_client)
    geoseg.mapping.map(
        [west, east],
        tmp_path / "map.tif",
        model=str(model),
        client=dask_client,
        tile=64,
        crs="EPSG:32633",
        resolution=10,
        resampling="bilinear",
    )
    with rasterio.open(tmp_path / "map.tif") as out:
        got, shape, transform, crs = out.read(1), out.shape, out.transform, out.crs
    mosaic = np.zeros((3, *shape), np.uint8)
    for scene in (east, west):  # GDAL's warper, lowest priority first
        with rasterio.open(scene) as src:
            warped = np.zeros_like(mosaic)
            reproject(
                src.read(),
                warped,
                src_transform=src.transform,
                src_crs=src.crs,
                src_nodata=0,
                dst_transform=transform,
                dst_crs=crs,
                dst_nodata=0,
                resampling=Resampling.bilinear,
            )
        valid = (warped != 0).all(axis=0)
        mosaic[:, valid] = warped[:, valid]
    write_raster(
        tmp_path / "mosaic.tif", mosaic, crs=crs.to_string(), transform=transform, nodata=0
    )
    geoseg.predict(
        str(tmp_path / "mosaic.tif"),
        str(tmp_path / "want.tif"),
        model=str(model),
        client=dask_client,
        tile=64,
    )
    want, _ = read(tmp_path / "want.tif")
    agree = float((got == want).mean())
    assert (want != CLASS_NODATA).mean() > 0.5  # both scenes are in the map
    assert agree >= 0.995, agree


def write_aoi(path: Path, polygon: list[tuple[float, float]], crs: str = "EPSG:4326") -> Path:
    """A GeoJSON AOI; vertices given in EPSG:32633 are written in ``crs``."""
    coords = polygon
    if crs != "EPSG:32633":
        tr = Transformer.from_crs(32633, crs, always_xy=True)
        coords = [tr.transform(x, y) for x, y in polygon]
    doc: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [coords]},
            }
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def test_aoi_clips_to_its_box_and_polygon_with_context_from_beyond(
    tmp_path: Path,
    whole: tuple[Path, np.ndarray],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    from rasterio.features import geometry_mask
    from shapely import Polygon

    scene, data = whole
    model = model_factory(in_channels=3)
    x0, y0 = ORIGIN
    # vertices off the pixel lattice, so no pixel centre lies on an edge (a tie either way)
    tri = [
        (x0 + 403.1, y0 - 302.7),
        (x0 + 1501.3, y0 - 407.9),
        (x0 + 806.9, y0 - 1301.7),
        (x0 + 403.1, y0 - 302.7),
    ]
    aoi = write_aoi(tmp_path / "aoi.geojson", tri)
    geoseg.predict(
        str(scene), str(tmp_path / "scene.tif"), model=str(model), client=dask_client, tile=64
    )
    geoseg.mapping.map(
        pieces(tmp_path, data),
        tmp_path / "map.tif",
        model=str(model),
        client=dask_client,
        tile=64,
        aoi=str(aoi),
    )
    full, ft = read(tmp_path / "scene.tif")
    got, gt = read(tmp_path / "map.tif")
    r0, c0 = round((ft.f - gt.f) / 10), round((gt.c - ft.c) / 10)
    # the triangle's box on the grid (rows 30-131, columns 40-151), its corner on the model's stride
    assert 22 < r0 <= 30 and 32 < c0 <= 40 and (r0 + got.shape[0], c0 + got.shape[1]) == (131, 151)
    inside = geometry_mask([Polygon(tri)], got.shape, gt, invert=True)
    assert inside.sum() > 3000
    window = full[r0 : r0 + got.shape[0], c0 : c0 + got.shape[1]]
    assert np.array_equal(got[inside], window[inside])
    assert (got[~inside] == CLASS_NODATA).all()


def dated(path: Path, data: np.ndarray, when: str) -> Path:
    write_raster(path, data, transform=from_origin(*ORIGIN, 10, 10), nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME=when)
    return path


def test_order_newest_puts_the_newest_scene_on_top(
    tmp_path: Path,
    rng: np.random.Generator,
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    old = dated(
        tmp_path / "old.tif",
        np.clip(random_scene(rng, 3, 64, 96, "uint8"), 1, 255),
        "2021:05:01 10:00:00",
    )
    new = dated(
        tmp_path / "new.tif",
        np.clip(random_scene(rng, 3, 64, 96, "uint8"), 1, 255),
        "2023:07:02 10:00:00",
    )
    model = str(model_factory(in_channels=3))
    for scene in (old, new):
        geoseg.predict(
            str(scene),
            str(tmp_path / f"{scene.stem}-classes.tif"),
            model=model,
            client=dask_client,
            tile=64,
        )
    geoseg.mapping.map([old, new], tmp_path / "given.tif", model=model, client=dask_client, tile=64)
    geoseg.mapping.map(
        [old, new],
        tmp_path / "newest.tif",
        model=model,
        client=dask_client,
        tile=64,
        order="newest",
    )
    assert np.array_equal(read(tmp_path / "given.tif")[0], read(tmp_path / "old-classes.tif")[0])
    assert np.array_equal(read(tmp_path / "newest.tif")[0], read(tmp_path / "new-classes.tif")[0])
    assert not np.array_equal(read(tmp_path / "given.tif")[0], read(tmp_path / "newest.tif")[0])


def band_item(
    folder: Path, name: str, path: Path, when: str = "2024-06-01T10:00:00Z"
) -> dict[str, Any]:
    """A STAC item for a 3-band file, its bands split into one file per band (b1, b2, b3)."""
    with rasterio.open(path) as src:
        data, transform, nodata = src.read(), src.transform, src.nodata
    assets = {}
    for i in range(3):
        band = write_raster(
            folder / f"{name}_b{i + 1}.tif", data[i], transform=transform, nodata=nodata
        )
        assets[f"b{i + 1}"] = {
            "href": band.name,
            "type": "image/tiff; application=geotiff",
        }  # beside the item
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": name,
        "geometry": None,
        "properties": {"datetime": when},
        "assets": assets,
        "links": [],
    }


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1 for as long as the test runs."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_stac_collection_url_item_file_and_manifest_map_like_the_scene(
    tmp_path: Path,
    whole: tuple[Path, np.ndarray],
    model_factory: Callable[..., Path],
    dask_client: Any,
    http_folder: tuple[Path, str],
) -> None:
    scene, data = whole
    www, url = http_folder
    a, b, c, d = pieces(tmp_path, data)
    collection = {
        "type": "FeatureCollection",
        "features": [band_item(www, "a", a), band_item(www, "b", b)],
    }
    (www / "search.json").write_text(json.dumps(collection))
    (tmp_path / "c.json").write_text(json.dumps(band_item(tmp_path, "c", c)))
    (tmp_path / "rest.txt").write_text("# the rest of the region\nc.json\n\nd.tif\n")
    model = str(model_factory(in_channels=3))
    geoseg.predict(
        str(scene), str(tmp_path / "scene.tif"), model=model, client=dask_client, tile=64
    )
    result = geoseg.mapping.map(
        [f"{url}/search.json", tmp_path / "rest.txt"],
        tmp_path / "map.tif",
        model=model,
        client=dask_client,
        tile=64,
    )
    assert result.extras["scenes"] == 4
    assert np.array_equal(read(tmp_path / "map.tif")[0], read(tmp_path / "scene.tif")[0])


def test_bad_input_is_one_line_before_any_work(
    tmp_path: Path,
    rng: np.random.Generator,
    whole: tuple[Path, np.ndarray],
    model_factory: Callable[..., Path],
) -> None:
    import shapely

    scene, data = whole
    model = str(model_factory(in_channels=3))
    out = tmp_path / "map.tif"
    four = write_raster(
        tmp_path / "four.tif",
        random_scene(rng, 4, 32, 32, "uint8"),
        transform=from_origin(*ORIGIN, 10, 10),
    )
    far = write_aoi(tmp_path / "far.geojson", [(0, 0), (10, 0), (10, 10), (0, 0)])
    bare = tmp_path / "bare.shp"
    import pyogrio

    with pytest.warns(UserWarning, match="crs"):  # pyogrio's own warning: what this case is about
        pyogrio.raw.write(
            str(bare),
            geometry=np.array(
                [shapely.box(*ORIGIN, ORIGIN[0] + 100, ORIGIN[1] + 100).wkb], dtype=object
            ),
            field_data=[],
            fields=[],
            geometry_type="Polygon",
            crs=None,
            driver="ESRI Shapefile",
        )
    item = band_item(tmp_path, "broken", scene)
    item["assets"]["b2"]["href"] = "missing_b2.tif"
    (tmp_path / "broken.json").write_text(json.dumps(item))
    cases = [
        ([scene, four], {}, "no common band set: .*whole.tif has 3 band.*four.tif 4"),
        ([scene], {"aoi": str(far)}, "no scene intersects the AOI"),
        ([scene], {"aoi": str(bare)}, "--aoi .*bare.shp has no CRS"),
        ([scene], {"crs": "EPSG:99999999"}, "--crs 'EPSG:99999999' cannot be parsed"),
        ([tmp_path / "broken.json"], {}, "broken.json.*b2.*missing_b2.tif.*cannot be read"),
        ([tmp_path / "none-*.tif"], {}, "no file matches"),
        ([scene], {"order": "newest"}, "--order newest: scene .*whole.tif has no date"),
    ]
    for scenes, kw, message in cases:
        with pytest.raises(GeosegError, match=message) as err:
            geoseg.mapping.map(scenes, out, model=model, **kw)
        assert "\n" not in str(err.value)
        assert not out.exists()
    from geoseg.cli.main import cli

    res = CliRunner().invoke(cli, ["map", str(scene), str(four), "-o", str(out), "--model", model])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no common band set" in res.output


def test_a_map_job_runs_once_and_resumes(
    tmp_path: Path,
    whole: tuple[Path, np.ndarray],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    from geoseg.jobs.run import run_batch

    scene, data = whole
    pieces(tmp_path, data)
    model = model_factory(in_channels=3)
    job = tmp_path / "region.yaml"
    job.write_text(
        f"map:\n  scenes: ['[a-d].tif']\n  output: out/region.tif\n  order: given\n"
        f"model: {model}\npredict:\n  tile: 64\n"
    )
    (tmp_path / "out").mkdir()
    first = run_batch(job, client=dask_client)
    assert [o.status for o in first.outcomes] == ["done"], first.outcomes[0].error
    geoseg.predict(
        str(scene), str(tmp_path / "scene.tif"), model=str(model), client=dask_client, tile=64
    )
    assert np.array_equal(read(tmp_path / "out" / "region.tif")[0], read(tmp_path / "scene.tif")[0])
    assert [o.status for o in run_batch(job, client=dask_client).outcomes] == ["skipped"]
    piece(tmp_path / "d.tif", data, 10, 20, 60, 71)  # a scene changed: the map is made again
    assert [o.status for o in run_batch(job, client=dask_client).outcomes] == ["done"]
    job.write_text("map:\n  scenes: [a.tif]\n  output: x.tif\n  order: oldest\n")
    with pytest.raises(GeosegError, match="map: unknown --order 'oldest'"):
        run_batch(job, client=dask_client)
