"""The built-in model and sample scene that README's first command runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rasterio
from click.testing import CliRunner
from rio_cogeo.cogeo import cog_validate

import geoseg
from geoseg.cli.main import cli
from geoseg.models.receptive_field import measure_receptive_field

README = Path(__file__).resolve().parents[1] / "README.md"


def test_builtin_model_describes_itself() -> None:
    m = geoseg.load_model()
    assert m.name == "s2-landcover-unet"
    assert m.in_bands == ["B02", "B03", "B04", "B08"]
    assert [c.value for c in m.classes] == list(range(1, 9))
    assert not m.network.training
    assert m.receptive_field == measure_receptive_field(m.network, 4, m.output_stride)
    x = np.zeros((1, 4, 64, 64), np.float32)
    import torch

    with torch.inference_mode():
        assert tuple(m.network(torch.from_numpy(x)).shape) == (1, 8, 64, 64)


def test_readme_model_card_matches_the_shipped_model() -> None:
    m = geoseg.load_model()
    val = m.config.training["validation"]
    text = README.read_text()
    card = re.search(r"validation mIoU \*\*([0-9.]+)\*\*", text)
    assert card is not None, "README model card lost its validation mIoU"
    assert float(card.group(1)) == round(val["miou"], 3)
    for name, iou in zip(val["classes"], val["iou"]):
        row = re.search(rf"\| {name} \| ([0-9.]+) \|", text)
        assert row is not None and float(row.group(1)) == round(iou, 3), name


def test_sample_scene_is_a_small_georeferenced_crop() -> None:
    with rasterio.open(geoseg.sample_scene()) as src:
        assert (
            src.count == 4 and src.width <= 512 and src.height <= 512 and src.crs.to_epsg() == 32633
        )


def test_demo_writes_both_rasters(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "d"), "-q"])
    assert r.exit_code == 0, r.output
    classes, probs = (
        tmp_path / "d" / "sample-classes.tif",
        tmp_path / "d" / "sample-probabilities.tif",
    )
    assert cog_validate(str(classes))[0] and cog_validate(str(probs))[0]
    with rasterio.open(classes) as c:
        values = np.unique(c.read(1))
    assert set(values.tolist()) <= set(range(1, 9)) and len(values) >= 4
    assert str(classes.resolve()) in r.stdout
