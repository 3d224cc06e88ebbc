"""``geoseg.predict`` end to end on a real loopback Dask cluster: the output a user opens in QGIS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

import geoseg
from geoseg.classes import CLASS_NODATA
from geoseg.errors import GeosegWarning
from tests.conftest import random_scene, write_raster


def run(scene: Path, out: Path, model: Path, client: Any, **kw: Any) -> geoseg.PredictResult:
    return geoseg.predict(str(scene), str(out), model=str(model), client=client, **kw)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_output_is_a_cog_on_the_scene_grid_with_classes_and_colours(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=3, height=130, width=170, dtype="uint16")
    model = model_factory(in_channels=3, dtype="uint16")
    out = tmp_path / "classes.tif"
    result = run(scene, out, model, dask_client, tile=64)
    assert result.output == out and result.tiles > 4
    is_valid, errors, _ = cog_validate(str(out))
    assert is_valid, errors
    with rasterio.open(scene) as s, rasterio.open(out) as o:
        assert (o.width, o.height, o.crs, o.transform) == (s.width, s.height, s.crs, s.transform)
        assert o.dtypes[0] == "uint8" and o.nodata == CLASS_NODATA
        cmap = o.colormap(1)
        loaded = geoseg.load_model(str(model))
        for c in loaded.classes:
            assert cmap[c.value][:3] == tuple(c.color)
        names = json.loads(o.tags()["GEOSEG_CLASSES"])
        assert [n["name"] for n in names] == [c.name for c in loaded.classes]
        values = set(np.unique(o.read(1)).tolist())
        assert values <= {c.value for c in loaded.classes} and len(values) > 1
    assert not list(tmp_path.glob(".*part*")), "temporary files left behind"


def test_class_raster_does_not_depend_on_tile_size(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=2, height=150, width=111, dtype="float32")
    model = model_factory(in_channels=2, dtype="float32")
    outs = []
    for tile in (56, 96, 512):
        out = tmp_path / f"c{tile}.tif"
        run(scene, out, model, dask_client, tile=tile, batch_size=3)
        outs.append(read(out))
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)


def test_probabilities_are_uint8_per_class_and_agree_with_classes(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=3, height=80, width=90)
    model = model_factory(in_channels=3)
    out, probs = tmp_path / "c.tif", tmp_path / "p.tif"
    run(scene, out, model, dask_client, tile=64, probabilities=str(probs))
    assert cog_validate(str(probs))[0]
    p = read(probs)
    c = read(out)[0]
    assert p.shape == (4, 80, 90) and p.dtype == np.uint8
    total = p.astype(int).sum(0)
    assert (np.abs(total - 255) <= 3).all()
    confident = np.sort(p, axis=0)[-1] - np.sort(p, axis=0)[-2] > 2
    assert ((p.argmax(0) + 1) == c)[confident].all()


def test_nodata_stays_nodata_and_what_lies_under_it_does_not_leak(
    tmp_path: Path, rng: np.random.Generator, model_factory: Callable[..., Path], dask_client: Any
) -> None:
    model = model_factory(in_channels=3, dtype="float32")
    img = random_scene(rng, 3, 90, 100, "float32")
    hole = (slice(30, 55), slice(40, 70))
    a, b = img.copy(), img.copy()
    a[:, hole[0], hole[1]] = np.nan
    b[:, hole[0], hole[1]] = -9999.0
    sa = write_raster(tmp_path / "a.tif", a)
    sb = write_raster(tmp_path / "b.tif", b, nodata=-9999.0)
    ca, cb = tmp_path / "ca.tif", tmp_path / "cb.tif"
    run(sa, ca, model, dask_client, tile=64)
    run(sb, cb, model, dask_client, tile=64)
    ra, rb = read(ca)[0], read(cb)[0]
    assert (ra[hole] == CLASS_NODATA).all() and (rb[hole] == CLASS_NODATA).all()
    assert (ra != CLASS_NODATA).sum() == 90 * 100 - 25 * 30
    np.testing.assert_array_equal(ra, rb)


def test_alpha_band_masks_input_pixels(
    tmp_path: Path, rng: np.random.Generator, model_factory: Callable[..., Path], dask_client: Any
) -> None:
    rgb = random_scene(rng, 3, 64, 64, "uint8")
    alpha = np.full((1, 64, 64), 255, np.uint8)
    alpha[0, :10, :] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(0, 640, 10, 10),
        photometric="rgb",
        alpha="yes",
    ) as dst:
        dst.write(np.concatenate([rgb, alpha]))
    out = tmp_path / "c.tif"
    run(path, out, model_factory(in_channels=3), dask_client, tile=64, bands="1,2,3")
    c = read(out)[0]
    assert (c[:10] == CLASS_NODATA).all() and (c[10:] != CLASS_NODATA).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("crs", ["EPSG:4326", None])
def test_geographic_and_missing_crs(
    tmp_path: Path,
    rng: np.random.Generator,
    model_factory: Callable[..., Path],
    dask_client: Any,
    crs: str | None,
) -> None:
    arr = random_scene(rng, 1, 40, 50, "int16")
    transform = from_origin(179.99, -16.5, 0.0001, 0.0001) if crs else None
    scene = write_raster(tmp_path / "s.tif", arr, crs=crs, transform=transform, tiled=False)
    out = tmp_path / "c.tif"
    model = model_factory(in_channels=1, dtype="int16")
    if crs is None:
        with pytest.warns(GeosegWarning, match="no CRS"):
            run(scene, out, model, dask_client, tile=64)
    else:
        run(scene, out, model, dask_client, tile=64)
    with rasterio.open(out) as o:
        assert (o.width, o.height) == (50, 40)
        if crs:
            assert o.crs.to_epsg() == 4326 and o.transform.almost_equals(transform)
        else:
            assert o.crs is None


def test_existing_output_is_kept_without_overwrite(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=3, height=40, width=40)
    out = tmp_path / "c.tif"
    out.write_bytes(b"precious")
    with pytest.raises(geoseg.errors.OutputError, match="--overwrite"):
        run(scene, out, model_factory(in_channels=3), dask_client)
    assert out.read_bytes() == b"precious"
    run(scene, out, model_factory(in_channels=3), dask_client, overwrite=True)
    assert read(out).shape == (1, 40, 40)


def test_a_worker_reads_a_rewritten_scene_afresh(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    """Workers keep scenes open between tasks (for GDAL's block cache); a file rewritten in
    place is read as it is now, never from the old handle."""
    from geoseg.models.checkpoint import file_sha256
    from geoseg.prediction.plan import plan_tasks
    from geoseg.prediction.tasks import run_tile_task
    from geoseg.tiling import TileGrid

    model = model_factory(in_channels=3)
    scene = tmp_path / "s.tif"
    grid = TileGrid.create(64, 64, 64, 8, 4)

    def classes() -> list[np.ndarray]:
        tasks = plan_tasks(
            grid, str(scene), [1, 2, 3], str(model), file_sha256(model), "cpu", 4, False, 4
        )
        return [r.classes for t in tasks for r in run_tile_task(t)]

    write_raster(scene, random_scene(np.random.default_rng(1), 3, 64, 64, "uint8"))
    first = classes()
    write_raster(scene, random_scene(np.random.default_rng(2), 3, 64, 64, "uint8"))
    second = classes()
    assert not all((a == b).all() for a, b in zip(first, second))
    write_raster(scene, random_scene(np.random.default_rng(1), 3, 64, 64, "uint8"))
    assert all((a == b).all() for a, b in zip(first, classes()))
