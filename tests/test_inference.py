"""Test-time augmentation, multi-scale inference and the dense CRF: what they promise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.engines.crf import CRFParams, dense_crf
from geoseg.engines.infer import InferenceOptions, _scales_tta, forward
from geoseg.models.load import load_model
from geoseg.models.receptive_field import measure_receptive_field
from tests.conftest import random_scene, write_raster

CPU = torch.device("cpu")


def test_d4_averaging_makes_predictions_rotation_and_flip_equivariant(
    model_factory: Callable[..., Path],
) -> None:
    net = load_model(model_factory(in_channels=3)).network
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    rotated = np.ascontiguousarray(np.rot90(x, 1, (2, 3)))
    flipped = np.ascontiguousarray(x[..., ::-1])
    d4 = InferenceOptions(tta="d4")
    base = forward(net, x, CPU, d4)
    assert torch.allclose(forward(net, rotated, CPU, d4), torch.rot90(base, 1, (2, 3)), atol=1e-4)
    assert torch.allclose(forward(net, flipped, CPU, d4), torch.flip(base, (3,)), atol=1e-4)
    plain = forward(net, x, CPU)
    assert not torch.allclose(forward(net, rotated, CPU), torch.rot90(plain, 1, (2, 3)), atol=1e-2)


class Augmented(torch.nn.Module):
    """The whole per-tile computation (augmentations, scales, CRF) as one differentiable network."""

    def __init__(self, net: torch.nn.Module, options: InferenceOptions) -> None:
        super().__init__()
        self.net, self.options = net, options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _scales_tta(self.net, x, self.options)
        return dense_crf(logits, x, self.options.crf) if self.options.crf else logits


@pytest.mark.parametrize(
    "options",
    [
        InferenceOptions(tta="d4"),
        InferenceOptions(scales=(0.75, 1.0, 1.25)),
        InferenceOptions(scales=(0.5, 2.0)),
        InferenceOptions(crf=CRFParams(iterations=3, radius=2)),
        InferenceOptions(tta="flip", scales=(0.5, 1.0), crf=CRFParams(iterations=2, radius=3)),
    ],
    ids=["d4", "scales", "scales-wide", "crf", "all"],
)
def test_margin_covers_the_measured_reach_of_augmentation_and_crf(
    options: InferenceOptions, model_factory: Callable[..., Path]
) -> None:
    """The margin predict adds must cover every input pixel the augmented output depends on
    (the gradient's support, which is exact), and not overshoot by more than the alignment."""
    model = load_model(model_factory(in_channels=3))
    align = options.alignment(model.config.output_stride)
    measured = measure_receptive_field(Augmented(model.network, options), 3, align, trials=1)
    context = options.context(model.config.receptive_field)
    assert measured <= context <= measured + align + 4


def test_crf_removes_speckle_and_keeps_the_colour_edge() -> None:
    rng = np.random.default_rng(0)
    h, w = 48, 64
    truth = np.zeros((h, w), np.int64)
    truth[:, 37:] = 1  # an edge off the middle, so smoothing alone would not find it
    image = torch.zeros(1, 3, h, w)
    image[:, :, :, 37:] = 1.5
    image += 0.1 * torch.from_numpy(rng.normal(size=image.shape)).float()
    logits = torch.zeros(1, 2, h, w)
    logits[0, 1] = torch.from_numpy(np.where(truth == 1, 1.0, -1.0)).float()
    flip = torch.from_numpy(rng.random((h, w)) < 0.2)
    logits[0, 1][flip] *= -1
    before = float(((logits[0, 1] > 0).long().numpy() == truth).mean())
    after_logp = dense_crf(logits, image, CRFParams())
    after = float((after_logp[0].argmax(0).numpy() == truth).mean())
    assert before < 0.85
    assert after > 0.98
    assert torch.allclose(after_logp.exp().sum(1), torch.ones(1, h, w), atol=1e-4)


def test_cli_predict_with_tta_scales_and_crf_is_tile_independent(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    model = model_factory(in_channels=3)
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(2), 3, 80, 100, "uint8")
    )
    runner = CliRunner()
    outs = []
    for tile in (256, 384):
        out = tmp_path / f"c{tile}.tif"
        res = runner.invoke(
            cli,
            [
                "predict",
                str(scene),
                "-o",
                str(out),
                "--model",
                str(model),
                "--tile",
                str(tile),
                "--tta",
                "d4",
                "--scales",
                "0.75,1",
                "--crf",
                "--crf-iterations",
                "2",
                "--workers",
                "1",
                "--quiet",
            ],
        )
        assert res.exit_code == 0, res.output
        with rasterio.open(out) as src:
            outs.append(src.read(1))
    assert (outs[0] == outs[1]).all()
    bad = runner.invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(tmp_path / "x.tif"),
            "--model",
            str(model),
            "--scales",
            "0.75,big",
        ],
    )
    assert bad.exit_code != 0 and "--scales" in bad.output and not (tmp_path / "x.tif").exists()
