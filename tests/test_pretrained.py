"""``--pretrained``: torchvision-layout weights land in the encoder, the first convolution follows
the bands by name, and every mismatch is one line before training. Nothing is downloaded: the
weights are torchvision networks initialised at random and saved here."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import torchvision
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.errors import ModelError
from geoseg.models import create_model
from geoseg.models.pretrained import load_pretrained
from geoseg.training.chips import make_chips
from tests.conftest import labeled_scene


def tv_weights(
    tmp_path: Path, name: str, seed: int = 0, wrap: str | None = None
) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()} if wrap else net.state_dict()
    path = tmp_path / f"{name}.pt"
    torch.save({wrap: state} if wrap else state, path)
    return path, net


def tv_resnet_features(net: Any, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_weights_land_in_the_encoder_with_bands_matched_by_name(tmp_path: Path) -> None:
    path, ref = tv_weights(tmp_path, "resnet18", wrap="state_dict")
    net = create_model("unet", 3, 4, encoder="resnet18").eval()
    # the model's bands are Sentinel-2 blue, green, red; the weights expect red, green, blue
    load_pretrained(net, "unet", str(path), ["B02", "B03", "B04"], ["red", "green", "blue"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.encoder(x)[-1], tv_resnet_features(ref, x[:, [2, 1, 0]]))
    pan = create_model("unet", 2, 4, encoder="resnet18")
    with pytest.raises(ModelError, match="model band 'nir' has no weights"):
        load_pretrained(pan, "unet", str(path), ["pan", "nir"], ["red", "green", "blue"])
    pan = create_model("unet", 1, 4, encoder="resnet18")
    load_pretrained(pan, "unet", str(path), ["pan"], ["red", "green", "blue"])
    torch.testing.assert_close(pan.encoder.conv1.weight[:, 0], ref.conv1.weight.sum(dim=1))


def test_imagenet_weights_come_through_torchvisions_weights_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.models._api as api

    _, ref = tv_weights(tmp_path, "mobilenet_v3_large")
    urls: list[str] = []

    def fake_download(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        urls.append(url)
        return ref.state_dict()

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_download)
    net = create_model("deeplabv3plus", 3, 2, backbone="mobilenetv3", aspp_channels=16)
    assert "ImageNet weights of mobilenet_v3_large" in load_pretrained(
        net, "deeplabv3plus", "imagenet", ["red", "green", "blue"]
    )
    assert urls and urls[0].startswith("https://download.pytorch.org/")
    torch.testing.assert_close(
        net.backbone.low[1].block[0][0].weight, ref.features[1].block[0][0].weight
    )


@pytest.fixture
def small_chips(tmp_path: Path, dask_client: Any) -> Path:
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    labeled_scene(img, lab, np.random.default_rng(2), 64, 64)
    with rasterio.open(img, "r+") as dst:
        dst.descriptions = ("blue", "green", "swir")
    make_chips(
        [(str(img), str(lab))], tmp_path / "chips", size=32, ignore_value=0, client=dask_client
    )
    return tmp_path / "chips"


def test_bad_pretrained_weights_are_one_line_before_training(
    tmp_path: Path, small_chips: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.models._api as api

    import geoseg.training.train

    def no_training(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("training started")

    r18, ref18 = tv_weights(tmp_path, "resnet18")
    online = [True]

    def download(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if online[0]:
            return ref18.state_dict()
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(geoseg.training.train, "run_epoch", no_training)
    monkeypatch.setattr(api, "load_state_dict_from_url", download)
    r34, _ = tv_weights(tmp_path, "resnet34")
    r50, _ = tv_weights(tmp_path, "resnet50")
    unet18 = ["--arch", "unet", "--arch-args", '{"encoder": "resnet18", "base_width": 8}']
    cases = [
        (unet18 + ["--pretrained", str(r50)], "conv1.weight|layer1.0.conv1.weight is"),
        (unet18 + ["--pretrained", str(r34)], "no place for"),
        (unet18 + ["--pretrained", str(tmp_path / "missing.pt")], "not found"),
        (
            unet18 + ["--pretrained", str(r18), "--pretrained-bands", "B01,B02"],
            "names 2 bands, but",
        ),
        (unet18 + ["--pretrained", "imagenet"], "model band 'swir' has no weights in ImageNet"),
        (
            ["--arch", "unet", "--arch-args", '{"depth": 2}', "--pretrained", "imagenet"],
            "no torchvision encoder",
        ),
        (
            unet18 + ["--pretrained", "imagenet"],
            "cannot download the ImageNet weights of resnet18.*--pretrained PATH",
        ),
    ]
    runner = CliRunner()
    for args, message in cases:
        online[0] = "no torchvision" in message or "swir" in message
        out = tmp_path / "m.pt"
        r = runner.invoke(cli, ["train", str(small_chips), "-o", str(out), "--epochs", "1", *args])
        assert r.exit_code != 0, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and __import__("re").search(message, lines[0]), (args, r.stderr)
        assert not out.exists()
