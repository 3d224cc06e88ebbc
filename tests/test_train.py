"""``geoseg train``: a small model learns a generated scene; the model file is complete; resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

import geoseg
from geoseg.cli.main import cli
from geoseg.errors import ChipError
from geoseg.training.chips import make_chips
from geoseg.training.evaluate import evaluate
from geoseg.training.train import train
from tests.conftest import labeled_scene, write_raster

SMALL = {"depth": 2, "base_width": 8}


@pytest.fixture
def chips(tmp_path: Path, dask_client: Any) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(5)
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    truth = labeled_scene(img, lab, rng, 256, 256)
    out = tmp_path / "chips"
    make_chips(
        [(str(img), str(lab))],
        out,
        size=64,
        stride=32,
        split_block=128,
        ignore_value=0,
        val_fraction=0.25,
        client=dask_client,
        class_names={1: "grass", 2: "water", 3: "soil"},
    )
    return out, img, truth


def test_small_model_learns_the_scene_and_predicts_it(
    tmp_path: Path, chips: tuple[Path, Path, np.ndarray], dask_client: Any
) -> None:
    out, img, truth = chips
    model = tmp_path / "m.pt"
    result = train(
        out, model, arch="unet", arch_kwargs=SMALL, epochs=8, batch_size=8, lr=1e-2, seed=0
    )
    assert result.best_miou >= 0.8, [h.val["miou"] for h in result.history if h.val]
    loaded = geoseg.load_model(str(model))
    cfg = loaded.config
    assert loaded.in_bands == ["band1", "band2", "band3"] and [c.name for c in loaded.classes] == [
        "grass",
        "water",
        "soil",
    ]
    assert cfg.ignore_value == 0 and cfg.output_stride == 4 and cfg.receptive_field > 0
    assert cfg.training["validation"]["miou"] == pytest.approx(result.best_miou, abs=1e-6)
    assert (
        cfg.training["best_epoch"] == result.best_epoch and cfg.geoseg_version == geoseg.__version__
    )
    pred = tmp_path / "pred.tif"
    geoseg.predict(str(img), str(pred), model=str(model), client=dask_client, tile=96)
    truth_path = write_raster(tmp_path / "truth.tif", truth)
    scores = evaluate(pred, truth_path)
    assert scores.miou >= 0.8


def test_resume_continues_exactly_where_it_stopped(
    tmp_path: Path, chips: tuple[Path, Path, np.ndarray]
) -> None:
    out, _, _ = chips
    full = train(
        out, tmp_path / "full.pt", arch="unet", arch_kwargs=SMALL, epochs=3, batch_size=8, seed=3
    )
    part = tmp_path / "part.pt"
    train(out, part, arch="unet", arch_kwargs=SMALL, epochs=1, batch_size=8, seed=3)
    resumed = train(
        out, part, arch="unet", arch_kwargs=SMALL, epochs=3, batch_size=8, seed=3, resume=True
    )
    assert len(resumed.history) == 3
    assert [h.loss for h in resumed.history] == pytest.approx(
        [h.loss for h in full.history], rel=1e-5
    )
    a = torch.load(tmp_path / ".full.pt.state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / ".part.pt.state.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_weight_average_is_an_exponential_average_of_the_steps() -> None:
    """Each step moves the average toward the weights by 1 - decay, with the decay held low over
    the first steps (so the random start fades) and the half-life given in steps."""
    from geoseg.training.epoch import WeightAverage

    net = torch.nn.Linear(2, 1)
    avg = WeightAverage(net, half_life_steps=4)
    assert avg.decay == pytest.approx(0.5**0.25)
    expected = net.weight.detach().clone()
    for step in range(1, 40):
        with torch.no_grad():
            net.weight.add_(1.0)
        avg.update(net)
        decay = min(0.5**0.25, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * net.weight.detach()
        torch.testing.assert_close(avg.network.weight, expected)
    assert not avg.network.weight.requires_grad
    assert (avg.network.weight < net.weight).all()  # it lags the weights it follows


def test_resume_with_weight_average_continues_it(
    tmp_path: Path, chips: tuple[Path, Path, np.ndarray]
) -> None:
    """--ema: validated and saved weights are the average, and --resume carries it on exactly."""
    out, _, _ = chips
    full = train(
        out,
        tmp_path / "full.pt",
        arch="unet",
        arch_kwargs=SMALL,
        epochs=3,
        batch_size=8,
        seed=3,
        ema=1.0,
    )
    part = tmp_path / "part.pt"
    train(out, part, arch="unet", arch_kwargs=SMALL, epochs=1, batch_size=8, seed=3, ema=1.0)
    resumed = train(
        out,
        part,
        arch="unet",
        arch_kwargs=SMALL,
        epochs=3,
        batch_size=8,
        seed=3,
        ema=1.0,
        resume=True,
    )
    assert [h.val["miou"] for h in resumed.history] == pytest.approx(
        [h.val["miou"] for h in full.history], abs=1e-6
    )
    a = torch.load(tmp_path / ".full.pt.state.pt", weights_only=True)
    b = torch.load(tmp_path / ".part.pt.state.pt", weights_only=True)
    for k in a["ema"]:
        torch.testing.assert_close(a["ema"][k], b["ema"][k])
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])
    saved = geoseg.load_model(str(tmp_path / "full.pt"))
    assert saved.config.training["options"]["ema"] == 1.0
    # three classes: the Dice term weighs 1 (two classes: 0.5), and the model file says so
    assert saved.config.training["options"]["dice_weight"] == 1.0
    if full.best_epoch == 3:
        for k, v in saved.network.state_dict().items():
            torch.testing.assert_close(v, a["ema"][k])


def test_train_errors(tmp_path: Path, chips: tuple[Path, Path, np.ndarray]) -> None:
    out, _, _ = chips
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(cli, ["train", str(empty), "-o", str(tmp_path / "m.pt")])
    assert (
        r.exit_code != 0 and "not a chips folder" in r.stderr and not (tmp_path / "m.pt").exists()
    )
    r = runner.invoke(
        cli, ["train", str(out), "-o", str(tmp_path / "m.pt"), "--arch", "resnet9000"]
    )
    assert r.exit_code != 0 and "unknown architecture" in r.stderr and "unet" in r.stderr
    with pytest.raises(ChipError, match="not a multiple"):
        train(
            out, tmp_path / "m.pt", arch="unet", arch_kwargs={"depth": 7, "base_width": 2}, epochs=1
        )
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"x")
    r = runner.invoke(cli, ["train", str(out), "-o", str(existing)])
    assert r.exit_code != 0 and "--overwrite" in r.stderr and existing.read_bytes() == b"x"
    with rasterio.open(next((out / "images").glob("*.tif"))) as src:
        assert src.count == 3


def test_cli_trains_a_deeplab_and_predicts_with_crf_and_tta(
    tmp_path: Path, chips: tuple[Path, Path, np.ndarray], dask_client: Any
) -> None:
    """``geoseg train --arch`` with arguments, then ``predict --crf --tta``: the model file
    carries the architecture, and the refined prediction still matches the scene."""
    out, img, truth = chips
    model = tmp_path / "dl.pt"
    args = '{"width": 0.125, "fc_channels": 32, "dilations": "hdc", "msc": true, "msc_channels": 8, "dropout": 0.1}'
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "train",
            str(out),
            "-o",
            str(model),
            "--arch",
            "deeplabv1",
            "--arch-args",
            args,
            "--epochs",
            "12",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = geoseg.load_model(str(model)).config
    assert cfg.arch == "deeplabv1" and cfg.arch_kwargs["msc"] is True and cfg.output_stride == 8
    pred = tmp_path / "pred.tif"
    res = runner.invoke(
        cli,
        [
            "predict",
            str(img),
            "-o",
            str(pred),
            "--model",
            str(model),
            "--crf",
            "--tta",
            "flip",
            "--workers",
            "1",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    with rasterio.open(pred) as src:
        accuracy = float((src.read(1) == truth).mean())
    assert accuracy >= 0.8


def test_overwrite_drops_the_old_resume_state_and_resume_refuses_another_run(
    tmp_path: Path, chips: tuple[Path, Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import geoseg.training.train
    from geoseg.errors import OutputError, TrainingError

    out, _, _ = chips
    model = tmp_path / "m.pt"
    state = tmp_path / ".m.pt.state.pt"
    train(out, model, arch="unet", arch_kwargs=SMALL, epochs=1, batch_size=8)
    assert state.exists()
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "train",
            str(out),
            "-o",
            str(model),
            "--arch",
            "unet",
            "--arch-args",
            '{"depth": 2, "base_width": 4}',
            "--epochs",
            "2",
            "--resume",
        ],
    )
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot resume" in r.stderr and "base_width" in r.stderr
    with pytest.raises(TrainingError, match="cannot resume.*unet-small"):
        train(out, model, arch="unet-small", epochs=2, resume=True)

    def interrupted(*args: Any, **kwargs: Any) -> float:
        raise KeyboardInterrupt

    # a new run over the old one, interrupted in its first epoch: nothing is left to resume
    monkeypatch.setattr(geoseg.training.train, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(
            out,
            model,
            arch="unet",
            arch_kwargs={"depth": 2, "base_width": 4},
            epochs=1,
            overwrite=True,
        )
    assert not state.exists()
    with pytest.raises(OutputError, match="nothing to resume"):
        train(out, model, arch="unet", arch_kwargs=SMALL, epochs=2, resume=True)


def test_without_validation_chips_no_score_is_reported(tmp_path: Path, dask_client: Any) -> None:
    rng = np.random.default_rng(7)
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    labeled_scene(img, lab, rng, 64, 64)
    out = tmp_path / "chips"
    make_chips(
        [(str(img), str(lab))], out, size=32, ignore_value=0, val_fraction=0, client=dask_client
    )
    r = CliRunner().invoke(
        cli,
        [
            "train",
            str(out),
            "-o",
            str(tmp_path / "m.pt"),
            "--arch",
            "unet",
            "--arch-args",
            '{"depth": 2, "base_width": 4}',
            "--epochs",
            "2",
            "--precision",
            "bf16",
            "--channels-last",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "no validation chips" in r.stderr and "no validation chips, so no score" in r.stdout
    assert "mIoU" not in r.stdout + r.stderr
    assert geoseg.load_model(str(tmp_path / "m.pt")).config.training["best_epoch"] == 2


def test_epochs_are_automatic_and_training_stops_after_patience(
    tmp_path: Path, dask_client: Any
) -> None:
    from geoseg.training.train import AUTO_EPOCHS, auto_epochs

    assert auto_epochs(1) == AUTO_EPOCHS[1] and auto_epochs(10_000) == AUTO_EPOCHS[0]
    rng = np.random.default_rng(9)
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    labeled_scene(img, lab, rng, 64, 64)
    out = tmp_path / "chips"
    make_chips([(str(img), str(lab))], out, size=32, ignore_value=0, client=dask_client)
    result = train(
        out,
        tmp_path / "m.pt",
        arch="unet",
        arch_kwargs={"depth": 2, "base_width": 4},
        epochs=6,
        patience=1,
        lr=1e-4,
    )
    n = len(result.history)
    # whatever the scores on this CPU: training ends at the limit, or one epoch after the best
    # once the first third of the epochs is done
    assert n == 6 or (
        n - result.best_epoch >= 1 and n >= 2 and (n == result.best_epoch + 1 or n == 2)
    )
    assert result.best_miou == pytest.approx(max(h.val["miou"] for h in result.history), abs=1e-5)


def test_a_cpu_with_bf16_hardware_is_told_about_precision_bf16(
    tmp_path: Path,
    chips: tuple[Path, Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a CPU that computes bf16 in hardware, training in fp32 (auto) names --precision bf16;
    elsewhere, and when bf16 is asked for, it says nothing."""
    import geoseg.training.train

    out = chips[0]
    for native, precision, told in (
        (True, "auto", True),
        (False, "auto", False),
        (True, "bf16", False),
    ):
        monkeypatch.setattr(
            geoseg.training.train, "cpu_has_native_bf16", lambda native=native: native
        )
        train(
            out,
            tmp_path / "m.pt",
            arch="unet",
            arch_kwargs=SMALL,
            epochs=1,
            batch_size=8,
            precision=precision,
            overwrite=True,
            device="cpu",
            quiet=False,
        )
        assert ("--precision bf16" in capsys.readouterr().err) is told, (native, precision)
