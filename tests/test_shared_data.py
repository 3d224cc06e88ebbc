"""The workflow on real scenes from ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import geoseg
from geoseg.classes import CLASS_NODATA
from geoseg.training.chips import make_chips
from geoseg.training.evaluate import evaluate
from geoseg.training.train import train
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.shared_data
LABELED = SHARED_DATA / "labeled"


@pytest.mark.parametrize(
    ("scene", "bands", "dtype"),
    [
        ("labeled/mass_buildings/22978945/image.tif", 3, "uint8"),  # striped, nodata 255
        ("labeled/spacenet_sn3_vegas_roads/image.tif", 1, "uint16"),  # EPSG:4326
        ("labeled/spacenet_sn7_mosaic/image.tif", 4, "int16"),  # nodata 0, alpha-like band
        ("unlabeled/rasterio/RGB.byte.tif", 3, "uint8"),  # nodata 0 corners
    ],
)
def test_predict_on_real_scenes_keeps_grid_and_nodata(
    tmp_path: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
    scene: str,
    bands: int,
    dtype: str,
) -> None:
    path = SHARED_DATA / scene
    out = tmp_path / "classes.tif"
    geoseg.predict(
        str(path),
        str(out),
        model=str(model_factory(in_channels=bands, dtype=dtype)),
        client=dask_client,
        tile=256,
    )
    assert cog_validate(str(out))[0]
    with rasterio.open(path) as s, rasterio.open(out) as o:
        assert (o.crs, o.transform, o.shape) == (s.crs, s.transform, s.shape)
        invalid = s.dataset_mask() == 0
        classes = o.read(1)
    assert (classes[invalid] == CLASS_NODATA).all()
    assert (classes[~invalid] != CLASS_NODATA).all()


def test_s2_chip_train_evaluate_beats_chance(tmp_path: Path, dask_client: Any) -> None:
    scene = LABELED / "s2_brandenburg_osm"
    chips = tmp_path / "chips"
    make_chips(
        [(str(scene / "image.tif"), str(scene / "label.tif"))],
        chips,
        size=128,
        stride=64,
        split_block=256,
        ignore_value=0,
        val_fraction=0.2,
        client=dask_client,
    )
    result = train(
        chips,
        tmp_path / "m.pt",
        arch="unet",
        arch_kwargs={"depth": 2, "base_width": 8},
        epochs=6,
        batch_size=8,
        lr=5e-3,
    )
    # eight classes: chance mIoU is about 0.06
    assert result.best_miou > 0.1, result.best_miou
    pred = tmp_path / "pred.tif"
    geoseg.predict(
        str(scene / "image.tif"), str(pred), model=str(tmp_path / "m.pt"), client=dask_client
    )
    scores = evaluate(pred, scene / "label.tif", ignore_value=0)
    assert scores.overall_accuracy > 0.3, scores.overall_accuracy


@pytest.mark.parametrize(
    ("scene", "vector", "field", "value_map", "background", "ignore"),
    [
        (
            "s2_brandenburg_osm",
            "osm_landuse_water.gpkg",
            "fclass",
            {
                "farm": 1,
                "forest": 2,
                "grass": 3,
                "meadow": 4,
                "residential": 5,
                "scrub": 6,
                "water": 7,
                "wetland": 8,
            },
            None,
            0,
        ),
        ("mass_buildings/22978945", "buildings.gpkg", "class", None, 0, 255),
    ],
)
def test_vector_labels_reproduce_the_shipped_label_raster(
    tmp_path: Path,
    dask_client: Any,
    scene: str,
    vector: str,
    field: str,
    value_map: dict[str, int] | None,
    background: int | None,
    ignore: int,
) -> None:
    """The label rasters were burned from these vectors; chipping the vectors must agree."""
    root = LABELED / scene
    chips = tmp_path / "chips"
    make_chips(
        [(str(root / "image.tif"), str(root / vector))],
        chips,
        size=128,
        val_fraction=0,
        label_field=field,
        value_map=value_map,
        background=background,
        ignore_value=ignore,
        min_labeled=0,
        max_nodata=1,
        client=dask_client,
    )
    from geoseg.training.chips import load_manifest

    with rasterio.open(root / "label.tif") as ref, rasterio.open(root / "image.tif") as img:
        ref_all = ref.read(1)
        mask = img.dataset_mask() > 0
        agree, total = 0, 0
        for c in load_manifest(chips)["chips"]:
            with rasterio.open(chips / "labels" / f"{c['id']}.tif") as src:
                lab = src.read(1)
                row, col = img.index(
                    src.transform.c + 0.5 * src.transform.a, src.transform.f + 0.5 * src.transform.e
                )
            expect = ref_all[row : row + 128, col : col + 128]
            ok = mask[row : row + 128, col : col + 128]
            # chips at the image edge are padded with the ignore value beyond it
            h, w = expect.shape
            assert (lab[h:, :] == ignore).all() and (lab[:, w:] == ignore).all()
            lab = lab[:h, :w]
            expect = np.where(expect == ignore, ignore, expect) if background is None else expect
            agree += int(((lab == expect) & ok).sum())
            total += int(ok.sum())
    assert total > 0 and agree / total > 0.97, agree / total


def test_polygons_of_a_real_prediction_equal_one_pass(tmp_path: Path, dask_client: Any) -> None:
    """The built-in model on the real Sentinel-2 scene, polygonized in small blocks."""
    import pyogrio
    import shapely
    from affine import Affine
    from rasterio.features import shapes

    from geoseg.vector.vectorize import vectorize

    scene = LABELED / "s2_brandenburg_osm" / "image.tif"
    classes = tmp_path / "classes.tif"
    geoseg.predict(str(scene), str(classes), client=dask_client)
    out = tmp_path / "polygons.fgb"
    vectorize(classes, out, block_size=256, client=dask_client)
    with rasterio.open(classes) as src:
        arr = src.read(1)
        t: Affine = src.transform
    want = [
        (int(v), shapely.geometry.shape(g))
        for g, v in shapes(arr, mask=arr != CLASS_NODATA, transform=t)
    ]
    meta, _, wkb, data = pyogrio.raw.read(str(out))
    got_cls = data[list(meta["fields"]).index("class")]
    assert len(wkb) == len(want)
    for v in {c for c, _ in want}:
        got_area = sum(g.area for c, g in zip(got_cls, shapely.from_wkb(wkb)) if c == v)
        want_area = sum(g.area for c, g in want if c == v)
        assert got_area == pytest.approx(want_area, rel=1e-9), v
