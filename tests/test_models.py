"""Every registered architecture: shapes, receptive field, seamless tiling, learning, HDC."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from geoseg.models import create_model, list_models, output_stride
from geoseg.models.checkpoint import GLOBAL_RECEPTIVE_FIELD
from geoseg.models.dilation import GriddingWarning, check_schedule
from geoseg.models.load import load_model
from geoseg.models.receptive_field import measure_receptive_field
from geoseg.tiling import auto_margin
from tests.conftest import random_scene, write_raster
from tests.test_seamless import assert_same_prediction, stitched_logits, whole_scene_logits

#: Each architecture (and upsampling method / option that changes the graph) at a CPU-test size.
SMALL: dict[str, tuple[str, dict[str, Any]]] = {
    "unet-transpose": ("unet", {"depth": 2, "base_width": 8, "upsample": "transpose"}),
    "unet-unpool": ("unet", {"depth": 2, "base_width": 8, "upsample": "unpool"}),
    "unet-bilinear": ("unet", {"depth": 2, "base_width": 8, "upsample": "bilinear"}),
    "fcn32s": ("fcn32s", {"width": 0.125, "fc_channels": 32, "dropout": 0.1}),
    "fcn16s": ("fcn16s", {"width": 0.125, "fc_channels": 32, "dropout": 0.1}),
    "fcn8s": ("fcn8s", {"width": 0.125, "fc_channels": 32, "dropout": 0.1}),
    "deeplabv1": (
        "deeplabv1",
        {"width": 0.125, "fc_channels": 32, "dilations": "hdc", "dropout": 0.1},
    ),
    "deeplabv1-msc": (
        "deeplabv1",
        {
            "width": 0.125,
            "fc_channels": 32,
            "dilations": "hdc",
            "msc": True,
            "msc_channels": 8,
            "dropout": 0.1,
        },
    ),
    "deeplabv3plus-mobilenet": (
        "deeplabv3plus",
        {"backbone": "mobilenetv3", "width_mult": 0.25, "aspp_channels": 16},
    ),
}
SLOW = {
    "deeplabv3plus-resnet50": ("deeplabv3plus", {"aspp_channels": 32}),
    "unet-resnet18": ("unet", {"encoder": "resnet18", "base_width": 8}),
}
#: Cases whose receptive field (hundreds of pixels) makes tiling and learning checks slow:
#: the default run checks their shapes only.
SHAPES_ONLY = ["unet-resnet18"]


def build(case: str, in_channels: int = 3, num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    arch, kwargs = {**SMALL, **SLOW}[case]
    torch.manual_seed(seed)
    return create_model(arch, in_channels, num_classes, **kwargs)


def test_every_registered_architecture_has_a_test_case() -> None:
    covered = {arch for arch, _ in {**SMALL, **SLOW}.values()}
    assert {a.name for a in list_models()} - {"unet-small"} <= covered


@pytest.mark.parametrize("case", sorted(SMALL) + SHAPES_ONLY)
def test_logits_at_input_resolution_for_any_multiple_of_the_stride(case: str) -> None:
    net = build(case, in_channels=5, num_classes=7).eval()
    s = output_stride(net)
    for h, w in [(s, s), (2 * s, 3 * s), (5 * s, s)]:
        with torch.no_grad():
            out = net(torch.randn(2, 5, h, w))
        assert out.shape == (2, 7, h, w)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", ["unet-unpool", "fcn8s", "deeplabv1-msc"])
def test_measured_receptive_field_is_where_the_output_stops_depending_on_the_input(
    case: str,
) -> None:
    """Beyond the radius nothing matters (rows or columns, every stride phase); at the radius
    something does, for some phase: the margin is sufficient and not larger than needed."""
    net = build(case).eval()
    s = output_stride(net)
    rf = measure_receptive_field(net, 3, s)
    size = 2 * rf + 4 * s
    size += -size % s
    c = size // 2 // s * s
    x = torch.randn(1, 3, size, size)
    gen = torch.Generator().manual_seed(1)

    def outputs(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = net(inp)[0]
        return torch.stack([out[:, c + p, c + q] for p in range(s) for q in range(s)])

    base = outputs(x)
    far = x.clone()
    far[..., c + s + rf :] = 4 * torch.randn(far[..., c + s + rf :].shape, generator=gen)
    far[..., : c - rf, :] = 4 * torch.randn(far[..., : c - rf, :].shape, generator=gen)
    assert torch.equal(outputs(far), base)
    edge = x.clone()
    edge[..., c - rf] += 4
    edge[..., c + s - 1 + rf] += 4
    assert not torch.equal(outputs(edge), base)


@pytest.mark.parametrize(
    "case", sorted(set(SMALL) - {"unet-transpose", "unet-unpool", "unet-bilinear"})
)
def test_architecture_tiles_seamlessly(
    case: str, tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    arch, kwargs = SMALL[case]
    model_path = model_factory(in_channels=3, arch=arch, **kwargs)
    cfg = load_model(model_path).config
    assert cfg.receptive_field > 0
    wide = cfg.output_stride < 32  # DeepLab v3+: a 900-px margin, so fewer (huge) tiles
    height, width = (40, 100) if wide else (75, 101)
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(3), 3, height, width, "uint8")
    )
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    reference = whole_scene_logits(scene, model_path)
    cores = (64,) if wide else (cfg.output_stride, 3 * cfg.output_stride)
    for core in cores:
        assert_same_prediction(stitched_logits(scene, model_path, 2 * margin + core), reference)


@pytest.mark.slow
def test_resnet50_deeplabv3plus_tiles_seamlessly(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    arch, kwargs = SLOW["deeplabv3plus-resnet50"]
    model_path = model_factory(in_channels=3, arch=arch, **kwargs)
    cfg = load_model(model_path).config
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(3), 3, 60, 70, "uint8")
    )
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    assert_same_prediction(
        stitched_logits(scene, model_path, 2 * margin + 48), whole_scene_logits(scene, model_path)
    )


def test_global_image_pooling_is_flagged_not_local(model_factory: Callable[..., Path]) -> None:
    path = model_factory(
        in_channels=3,
        arch="deeplabv3plus",
        backbone="mobilenetv3",
        width_mult=0.25,
        aspp_channels=16,
        image_pooling="global",
    )
    assert load_model(path).config.receptive_field == GLOBAL_RECEPTIVE_FIELD


def blocks_scene(
    rng: np.random.Generator, n: int, size: int = 96, cell: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``cell``-pixel squares of three classes, each class its own noisy colour."""
    colours = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 0.5, 1.0], [0.0, 1.0, -1.0]])
    k = size // cell
    labels = (
        torch.from_numpy(rng.integers(0, 3, (n, k, k)))
        .repeat_interleave(cell, 1)
        .repeat_interleave(cell, 2)
    )
    images = (
        colours[labels].permute(0, 3, 1, 2)
        + 0.4 * torch.from_numpy(rng.normal(size=(n, 3, size, size))).float()
    )
    return images, labels


def learn(case: str, steps: int) -> float:
    rng = np.random.default_rng(0)
    net = build(case)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    net.train()
    for _ in range(steps):
        x, y = blocks_scene(rng, 8)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = blocks_scene(np.random.default_rng(99), 8)
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("case", sorted(SMALL))
def test_small_model_learns_a_generated_scene(case: str) -> None:
    # chance is 0.33; every case reaches 0.94-1.0 on the CPUs seen, so 0.8 holds on any CPU kind
    assert learn(case, steps=80) >= 0.8


@pytest.mark.slow
def test_resnet50_deeplabv3plus_learns_a_generated_scene() -> None:
    assert learn("deeplabv3plus-resnet50", steps=80) >= 0.8


@pytest.mark.slow
def test_resnet_unet_tiles_seamlessly_and_learns(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    arch, kwargs = SLOW["unet-resnet18"]
    model_path = model_factory(in_channels=3, arch=arch, **kwargs)
    cfg = load_model(model_path).config
    assert cfg.output_stride == 32 and cfg.receptive_field > 0
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(3), 3, 60, 70, "uint8")
    )
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    reference = whole_scene_logits(scene, model_path)
    for core in (32, 64):
        assert_same_prediction(stitched_logits(scene, model_path, 2 * margin + core), reference)
    assert learn("unet-resnet18", steps=80) >= 0.8


def dilated_stack_has_holes(rates: list[int]) -> bool:
    """Whether a stack of random dilated 3x3 convolutions leaves input pixels unseen inside its
    receptive field (the gridding artefact), measured by the gradient's support."""
    torch.manual_seed(0)
    stack = torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, 3, padding=r, dilation=r) for r in rates])
    size = 2 * sum(rates) + 9
    x = torch.randn(1, 1, size, size, requires_grad=True)
    stack(x)[0, 0, size // 2, size // 2].backward()
    assert x.grad is not None
    seen = x.grad[0, 0] != 0
    r = sum(rates)
    c = size // 2
    return not bool(seen[c - r : c + r + 1, c - r : c + r + 1].all())


@pytest.mark.parametrize(
    "rates",
    [[1, 2, 5], [1, 2, 3], [2, 2, 2], [1, 2, 9], [2, 4, 8], [1, 2, 2], [3, 4, 5], [1, 3, 9]],
)
def test_hdc_check_agrees_with_the_measured_holes(rates: list[int]) -> None:
    assert check_schedule(rates).grids == dilated_stack_has_holes(rates)


def test_building_with_a_gridding_schedule_warns_and_hdc_does_not() -> None:
    with pytest.warns(GriddingWarning, match="shares the factor 2|share the factor 2"):
        create_model("deeplabv1", 3, 2, width=0.125, fc_channels=8, dilations=[2, 2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = create_model("deeplabv1", 3, 2, width=0.125, fc_channels=8, dilations="hdc")
    assert net.dilations == [1, 2, 5]


def test_fcn_upsampling_starts_as_bilinear_interpolation() -> None:
    net = build("fcn32s")
    x = torch.randn(1, 3, 4, 5)
    up = net.upscore
    ref = F.interpolate(
        torch.randn(1, 3, 4, 5).mul(0).add(x), scale_factor=32, mode="bilinear", align_corners=False
    )
    got = up(x)
    # the transposed convolution equals bilinear interpolation away from the border
    assert torch.allclose(got[..., 32:-32, 32:-32], ref[..., 32:-32, 32:-32], atol=1e-5)


def test_models_command_lists_stride_receptive_field_and_warnings() -> None:
    from click.testing import CliRunner

    from geoseg.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "models",
            "deeplabv1",
            "--arch-args",
            '{"width": 0.125, "fc_channels": 8, "dilations": [2, 2, 2]}',
        ],
    )
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("deeplabv1"))
    assert row.split()[1] == "8" and int(row.split()[2]) > 100
    assert "grids" in res.output
    res = runner.invoke(
        cli,
        [
            "models",
            "deeplabv3plus",
            "--arch-args",
            '{"backbone": "mobilenetv3", "width_mult": 0.25, "image_pooling": "global"}',
        ],
    )
    assert res.exit_code == 0 and "global" in res.output.splitlines()[1]
    res = runner.invoke(cli, ["models", "segformer"])
    assert res.exit_code != 0 and "unknown architecture" in res.output
