"""geoseg change: from-to raster, transition table, classes matched by name, grids matched."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from geoseg.classes import CLASS_NODATA, ClassInfo, class_tags, read_class_names
from geoseg.errors import OutputError, ResultsError
from geoseg.results.change import change
from tests.conftest import write_raster
from tests.test_results_stats import CLASSES, class_raster, random_classes


def test_a_raster_against_itself_is_all_unchanged(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 150, 130)
    path = class_raster(tmp_path / "c.tif", a)
    res = change(
        path, path, tmp_path / "ch.tif", table=tmp_path / "t.csv", client=dask_client, block_size=64
    )
    assert all(not r["changed"] for r in res.rows)
    valid = a != CLASS_NODATA
    assert sum(r["area_m2"] for r in res.rows) == pytest.approx(valid.sum() * 100.0, rel=1e-9)
    with rasterio.open(tmp_path / "ch.tif") as src:
        out = src.read(1)
        names = read_class_names(src)
        nodata = src.nodata
    assert ((out == nodata) == ~valid).all()
    assert {names[v] for v in np.unique(out[valid])} == {f"{c.name} (unchanged)" for c in CLASSES}
    with open(tmp_path / "t.csv") as f:
        table = list(csv.DictReader(f))
    assert sum(int(r["pixels"]) for r in table) == valid.sum()


def test_from_to_values_names_and_nodata(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 100, 100)
    b = a.copy()
    b[:50][a[:50] == 1] = 2  # forest -> farmland in the north half
    b[90:, :] = CLASS_NODATA  # nodata in AFTER only
    pa, pb = class_raster(tmp_path / "a.tif", a), class_raster(tmp_path / "b.tif", b)
    res = change(pa, pb, tmp_path / "ch.tif", changes_only=True, client=dask_client)
    with rasterio.open(tmp_path / "ch.tif") as src:
        out = src.read(1)
        names = read_class_names(src)
        nodata = src.nodata
        cmap = src.colormap(1)
    changed = (a != b) & (a != CLASS_NODATA) & (b != CLASS_NODATA)
    assert ((out != nodata) == changed).all()
    assert {names[v] for v in np.unique(out[changed])} == {"forest -> farmland"}
    assert cmap[int(np.unique(out[changed])[0])][:3] == (255, 255, 0)  # AFTER's class colour
    row = [r for r in res.rows if r["changed"]]
    assert len(row) == 1 and row[0]["pixels"] == changed.sum()
    assert row[0]["area_ha"] == pytest.approx(changed.sum() * 100 / 1e4)


def test_classes_matched_by_name_and_grid_resampled(
    tmp_path: Path, rng: np.random.Generator, dask_client: Any
) -> None:
    a = random_classes(rng, 64, 64)
    pa = class_raster(tmp_path / "a.tif", a)
    # AFTER: another model numbering the classes differently, at 5 m on a shifted grid
    renumber = {0: 3, 1: 0, 2: 1, 3: 2}
    fine = np.kron(a, np.ones((2, 2), int))
    b = np.vectorize(lambda v: renumber.get(v, CLASS_NODATA))(fine)
    b = np.pad(b, ((4, 0), (4, 0)), constant_values=CLASS_NODATA)
    pb = tmp_path / "b.tif"
    write_raster(
        pb,
        b.astype(np.uint8),
        transform=from_origin(300000 - 20, 5800000 + 20, 5, 5),
        nodata=CLASS_NODATA,
    )
    other = [ClassInfo(renumber[c.value], c.name, c.color) for c in CLASSES]
    with rasterio.open(pb, "r+") as dst:
        dst.update_tags(**class_tags(other, "other"))
    res = change(pa, pb, tmp_path / "ch.tif", client=dask_client)
    assert all(not r["changed"] for r in res.rows)
    assert sum(r["pixels"] for r in res.rows) == (a != CLASS_NODATA).sum()


def test_vector_of_the_changes(tmp_path: Path, rng: np.random.Generator, dask_client: Any) -> None:
    a = np.zeros((64, 64), np.uint8)
    b = a.copy()
    b[10:20, 10:30] = 1
    pa, pb = class_raster(tmp_path / "a.tif", a), class_raster(tmp_path / "b.tif", b)
    change(pa, pb, tmp_path / "ch.tif", vector=tmp_path / "ch.gpkg", client=dask_client)
    meta, _, _, data = pyogrio.raw.read(str(tmp_path / "ch.gpkg"), layer="polygons")
    names = data[list(meta["fields"]).index("class_name")]
    assert list(names) == ["water -> forest"]
    assert data[list(meta["fields"]).index("area_m2")][0] == pytest.approx(200 * 100.0)


def test_bad_input(tmp_path: Path, rng: np.random.Generator) -> None:
    a = random_classes(rng, 32, 32)
    pa = class_raster(tmp_path / "a.tif", a)
    pb = tmp_path / "b.tif"
    write_raster(pb, a.astype(np.uint8), nodata=CLASS_NODATA)
    with rasterio.open(pb, "r+") as dst:
        dst.update_tags(
            **class_tags(
                [ClassInfo(0, "water", (0, 0, 255)), ClassInfo(1, "woods", (0, 99, 0))], "x"
            )
        )
    with pytest.raises(
        ResultsError, match="only in .*a.tif: built-up, farmland, forest; only in .*b.tif: woods"
    ):
        change(pa, pb, tmp_path / "ch.tif")
    far = class_raster(tmp_path / "far.tif", a, transform=from_origin(0, 0, 10, 10))
    with pytest.raises(ResultsError, match="does not overlap"):
        change(pa, far, tmp_path / "ch.tif")
    (tmp_path / "ch.tif").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        change(pa, pa, tmp_path / "ch.tif")
    with pytest.raises(OutputError, match="same file"):
        change(pa, pa, pa, overwrite=True)


def test_cli(tmp_path: Path, rng: np.random.Generator) -> None:
    from geoseg.cli.main import cli

    a = random_classes(rng, 32, 32)
    pa = class_raster(tmp_path / "a.tif", a)
    r = CliRunner().invoke(
        cli,
        [
            "change",
            str(pa),
            str(pa),
            "-o",
            str(tmp_path / "ch.tif"),
            "--table",
            str(tmp_path / "t.csv"),
            "--workers",
            "1",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (
        (tmp_path / "t.csv")
        .read_text()
        .startswith("value,from,from_name,to,to_name,changed,pixels")
    )
