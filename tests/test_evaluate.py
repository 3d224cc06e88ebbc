"""``geoseg evaluate``: scores computed by hand agree; ignore and nodata are left out; grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import from_origin

from geoseg.cli.main import cli
from geoseg.errors import EvaluationError
from geoseg.training.evaluate import evaluate
from tests.conftest import write_raster


def test_scores_match_a_hand_count(tmp_path: Path) -> None:
    ref = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0]], np.uint8)
    pred = np.array([[1, 2, 2, 2], [1, 1, 2, 1], [3, 255, 3, 1]], np.uint8)
    r = write_raster(tmp_path / "r.tif", ref)
    p = write_raster(tmp_path / "p.tif", pred, nodata=255)
    s = evaluate(p, r, ignore_value=0, json_path=tmp_path / "rep.json")
    # kept pixels: 9 (two ignored, one prediction nodata); classes 1,2,3
    assert s.confusion.tolist() == [[3, 1, 0], [1, 3, 0], [0, 0, 1]]
    assert s.iou.tolist() == pytest.approx([3 / 5, 3 / 5, 1.0])
    assert s.overall_accuracy == pytest.approx(7 / 9)
    pe = (4 * 4 + 4 * 4 + 1 * 1) / 81
    assert s.kappa == pytest.approx((7 / 9 - pe) / (1 - pe))
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["values"] == [1, 2, 3] and report["miou"] == pytest.approx(
        (0.6 + 0.6 + 1) / 3, abs=1e-6
    )


def test_grid_mismatch_is_an_error_unless_resampled(tmp_path: Path) -> None:
    fine = np.kron(np.array([[1, 2], [3, 1]], np.uint8), np.ones((4, 4), np.uint8))
    coarse = np.array([[1, 2], [3, 1]], np.uint8)
    p = write_raster(tmp_path / "p.tif", fine, transform=from_origin(0, 80, 10, 10))
    r = write_raster(tmp_path / "r.tif", coarse, transform=from_origin(0, 80, 40, 40))
    with pytest.raises(EvaluationError, match="--resample"):
        evaluate(p, r)
    assert evaluate(p, r, resample=True).overall_accuracy == 1.0
    res = CliRunner().invoke(cli, ["evaluate", str(p), str(r)])
    assert res.exit_code != 0 and "grids differ" in res.stderr
    res = CliRunner().invoke(cli, ["evaluate", str(p), str(r), "--resample"])
    assert res.exit_code == 0 and "mIoU 1.0000" in res.stdout
