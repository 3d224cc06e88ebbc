"""``geoseg chip``: spatially separated splits, statistics, raster and vector labels, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from geoseg.chips import load_manifest, make_chips
from geoseg.cli.main import cli
from geoseg.errors import ChipError
from tests.conftest import labeled_scene, write_raster


@pytest.fixture
def pair(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path, np.ndarray]:
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    truth = labeled_scene(img, lab, rng)
    return img, lab, truth


def footprints(root: Path, split: str) -> list[tuple[float, ...]]:
    m = load_manifest(root)
    return [tuple(c["bounds"]) for c in m["chips"] if c["split"] == split]


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_splits_never_overlap_and_stats_match_train_pixels(
    tmp_path: Path, pair: tuple[Path, Path, np.ndarray], dask_client: object
) -> None:
    img, lab, _ = pair
    out = tmp_path / "chips"
    summary = make_chips([(str(img), str(lab))], out, size=32, stride=16, split_block=64,
                         ignore_value=0, val_fraction=0.3, test_fraction=0.1, client=dask_client,
                         class_names={1: "grass", 2: "water", 3: "soil"})
    assert summary.added.get("train", 0) > 0 and summary.added.get("val", 0) > 0
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        for a in footprints(out, s1):
            for b in footprints(out, s2):
                assert not overlaps(a, b), f"{s1} chip overlaps a {s2} chip"
    m = load_manifest(out)
    assert [c["name"] for c in m["classes"]] == ["grass", "water", "soil"]
    assert 0 not in [c["value"] for c in m["classes"]]
    pixels = []
    for c in m["chips"]:
        with rasterio.open(out / "labels" / f"{c['id']}.tif") as src:
            lab_chip = src.read(1)
            assert src.crs.to_epsg() == 32633
        hist = {int(k): v for k, v in c["hist"].items()}
        assert hist == {int(v): int((lab_chip == v).sum()) for v in np.unique(lab_chip) if v != 0}
        assert (lab_chip != 0).mean() >= 0.05
        if c["split"] == "train":
            with rasterio.open(out / "images" / f"{c['id']}.tif") as src:
                pixels.append(src.read().reshape(3, -1))
    allpx = np.concatenate(pixels, axis=1).astype(np.float64)
    np.testing.assert_allclose(m["stats"]["mean"], allpx.mean(1), rtol=1e-6)
    np.testing.assert_allclose(m["stats"]["std"], allpx.std(1), rtol=1e-5)
    index = pyogrio.read_info(out / "index.gpkg")
    assert index["features"] == len(m["chips"]) and index["crs"] == "EPSG:4326"


def test_chip_georeferencing_matches_the_image(tmp_path: Path, pair: tuple[Path, Path, np.ndarray], dask_client: object) -> None:
    img, lab, _ = pair
    out = tmp_path / "chips"
    make_chips([(str(img), str(lab))], out, size=32, ignore_value=0, client=dask_client)
    c = load_manifest(out)["chips"][0]
    with rasterio.open(img) as src, rasterio.open(out / "images" / f"{c['id']}.tif") as chip:
        row, col = src.index(chip.transform.c + 0.5 * chip.transform.a, chip.transform.f + 0.5 * chip.transform.e)
        np.testing.assert_array_equal(chip.read(), src.read(window=((row, row + 32), (col, col + 32))))


def test_vector_labels_in_another_crs_are_reprojected_repaired_and_burned(
    tmp_path: Path, rng: np.random.Generator, dask_client: object
) -> None:
    import shapely
    from rasterio.warp import transform_geom

    img = write_raster(tmp_path / "img.tif", rng.integers(0, 255, (3, 96, 96), dtype=np.uint8))
    with rasterio.open(img) as src:
        t = src.transform
    square = shapely.box(t.c + 10 * 10, t.f - 60 * 10, t.c + 50 * 10, t.f - 20 * 10)
    x0, y0 = t.c + 60 * 10, t.f - 90 * 10
    bowtie = shapely.Polygon([(x0, y0), (x0 + 300, y0 + 300), (x0 + 300, y0), (x0, y0 + 300)])
    assert not bowtie.is_valid
    geoms = [shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", g.__geo_interface__))
             for g in (square, bowtie)]
    vec = tmp_path / "labels.geojson"
    pyogrio.raw.write(str(vec), np.array(shapely.to_wkb(geoms), dtype=object),
                      [np.array(["field", "road"], dtype=object)], ["landuse"], crs="EPSG:4326",
                      geometry_type="Polygon", driver="GeoJSON")
    out = tmp_path / "chips"
    res = CliRunner().invoke(cli, ["chip", str(img), str(vec), "-o", str(out), "--size", "96",
                                   "--label-field", "landuse", "--value-map", "field=1,road=2",
                                   "--val-fraction", "0", "--min-labeled", "0", "--max-nodata", "0",
                                   "--scheduler", str(dask_client.scheduler.address)])
    assert res.exit_code == 0, res.output
    c = load_manifest(out)["chips"][0]
    with rasterio.open(out / "labels" / f"{c['id']}.tif") as src:
        lab = src.read(1)
    assert (lab[22:58, 12:48] == 1).all()
    assert (lab[:18] == 255).all() and (lab[:, :8] == 255).all()
    assert (lab == 2).sum() > 100


def test_label_raster_on_a_coarser_grid_is_resampled_by_nearest(tmp_path: Path, rng: np.random.Generator, dask_client: object) -> None:
    img = write_raster(tmp_path / "img.tif", rng.integers(0, 255, (2, 64, 64), dtype=np.uint8))
    coarse = rng.integers(1, 4, (32, 32)).astype(np.uint8)
    lab = write_raster(tmp_path / "lab.tif", coarse, transform=from_origin(300000, 5800000, 20, 20))
    out = tmp_path / "chips"
    make_chips([(str(img), str(lab))], out, size=64, val_fraction=0, client=dask_client)
    c = load_manifest(out)["chips"][0]
    with rasterio.open(out / "labels" / f"{c['id']}.tif") as src:
        np.testing.assert_array_equal(src.read(1), np.kron(coarse, np.ones((2, 2), np.uint8)))


def test_folder_grows_and_refuses_other_bands(tmp_path: Path, rng: np.random.Generator, dask_client: object) -> None:
    out = tmp_path / "chips"
    for i in range(2):
        labeled_scene(tmp_path / f"i{i}.tif", tmp_path / f"l{i}.tif", rng, 96, 96)
    make_chips([(str(tmp_path / "i0.tif"), str(tmp_path / "l0.tif"))], out, size=32, ignore_value=0,
               class_names={1: "grass"}, client=dask_client)
    n0 = len(load_manifest(out)["chips"])
    make_chips([(str(tmp_path / "i1.tif"), str(tmp_path / "l1.tif"))], out, size=32, ignore_value=0, client=dask_client)
    n1 = len(load_manifest(out)["chips"])
    assert n1 > n0
    with pytest.raises(ChipError, match="made for 3 bands"):
        make_chips([(str(tmp_path / "i0.tif"), str(tmp_path / "l0.tif"))], out, size=32, bands="1,2",
                   ignore_value=0, client=dask_client)
    with pytest.raises(ChipError, match="made for other classes"):
        make_chips([(str(tmp_path / "i1.tif"), str(tmp_path / "l1.tif"))], out, size=32, ignore_value=0,
                   class_names={1: "water"}, client=dask_client)
    assert len(load_manifest(out)["chips"]) == n1


def test_chip_errors(tmp_path: Path, pair: tuple[Path, Path, np.ndarray], rng: np.random.Generator, dask_client: object) -> None:
    img, lab, _ = pair
    far = write_raster(tmp_path / "far.tif", np.ones((64, 64), np.uint8), transform=from_origin(0, 0, 10, 10))
    with pytest.raises(ChipError, match="do not overlap"):
        make_chips([(str(img), str(far))], tmp_path / "c1", size=32, client=dask_client)
    vec = tmp_path / "v.gpkg"
    import shapely

    pyogrio.raw.write(str(vec), np.array([shapely.to_wkb(shapely.box(300000, 5798000, 301000, 5800000))], dtype=object),
                      [np.array([1])], ["klass"], crs="EPSG:32633", geometry_type="Polygon", driver="GPKG")
    with pytest.raises(ChipError, match="fields are: klass"):
        make_chips([(str(img), str(vec))], tmp_path / "c2", size=32, label_field="class", client=dask_client)
    wide = write_raster(tmp_path / "wide.tif", np.full((192, 192), 300, np.uint16))
    with pytest.raises(ChipError, match="out of range"):
        make_chips([(str(img), str(wide))], tmp_path / "c3", size=32, client=dask_client)
    unlabeled = write_raster(tmp_path / "none.tif", np.zeros((192, 192), np.uint8))
    with pytest.raises(ChipError, match="no labelled pixel.*--ignore-value"):
        make_chips([(str(img), str(unlabeled))], tmp_path / "c4", size=32, ignore_value=0, client=dask_client)
    assert not (tmp_path / "c4").exists()  # a folder the failed run created is gone again
    with pytest.raises(ChipError, match="no chip survived.*--min-labeled"):
        make_chips([(str(img), str(unlabeled))], tmp_path / "c4", size=32, ignore_value=0, min_labeled=0.05,
                   client=dask_client)
    (tmp_path / "c4").mkdir()
    with pytest.raises(ChipError, match="not a chips folder"):
        load_manifest(tmp_path / "c4")
    (tmp_path / "c4" / "chips.json").write_text("{broken")
    with pytest.raises(ChipError, match="damaged"):
        load_manifest(tmp_path / "c4")


def test_label_raster_nodata_is_unlabelled_unless_it_is_a_class(tmp_path: Path, rng: np.random.Generator, dask_client: object) -> None:
    img = write_raster(tmp_path / "img.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    lab = np.zeros((64, 64), np.uint8)
    lab[16:48, 16:48] = 1
    path = write_raster(tmp_path / "lab.tif", lab, nodata=0)
    make_chips([(str(img), str(path))], tmp_path / "a", size=64, val_fraction=0, client=dask_client)
    assert [c["value"] for c in load_manifest(tmp_path / "a")["classes"]] == [1]
    make_chips([(str(img), str(path))], tmp_path / "b", size=64, val_fraction=0, label_nodata_is_class=True,
               client=dask_client)
    assert [c["value"] for c in load_manifest(tmp_path / "b")["classes"]] == [0, 1]
