"""``geoseg predict`` as a user types it: bad input gets one line, a non-zero exit, no output file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geoseg.cli.main import cli
from tests.conftest import random_scene, write_raster


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.strip().endswith(lines[0]), "the error must be the last thing printed"
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def sched(dask_client: Any) -> str:
    return str(dask_client.scheduler.address)


@pytest.fixture
def model3(model_factory: Callable[..., Path]) -> str:
    return str(model_factory(in_channels=3))


def test_predict_writes_the_class_raster_with_a_local_process_cluster(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str
) -> None:
    scene = scene_factory(bands=3, height=70, width=90)
    out = tmp_path / "out.tif"
    res = invoke(
        "predict", str(scene), "-o", str(out), "--model", model3, "--workers", "1", "--tile", "64"
    )
    assert res.exit_code == 0, res.output
    assert "tiles" in res.stderr and "wrote" in res.stderr
    assert "dashboard http://" in res.stderr  # bokeh is a default dependency
    with rasterio.open(out) as o:
        assert o.shape == (70, 90)


def test_quiet_prints_nothing(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str, sched: str
) -> None:
    scene = scene_factory(bands=3, height=40, width=40)
    res = invoke(
        "predict",
        str(scene),
        "-o",
        str(tmp_path / "o.tif"),
        "--model",
        model3,
        "--scheduler",
        sched,
        "--quiet",
    )
    assert res.exit_code == 0 and res.stderr == "" and res.stdout == ""


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: p / "missing.tif", ["scene not found", "missing.tif"]),
        (lambda p: (p / "x.tif").write_text("hello") and p / "x.tif", ["not a raster"]),
        (lambda p: p, ["directory"]),
    ],
)
def test_unusable_scene(
    tmp_path: Path, model3: str, sched: str, make: Callable[[Path], Path], needles: list[str]
) -> None:
    out = tmp_path / "sub" / "o.tif"
    out.parent.mkdir()
    res = invoke(
        "predict", str(make(tmp_path)), "-o", str(out), "--model", model3, "--scheduler", sched
    )
    assert_one_line_error(res, *needles)
    assert not out.exists()


def test_truncated_tiff_reports_the_failing_window(tmp_path: Path, model3: str, sched: str) -> None:
    good = write_raster(
        tmp_path / "good.tif",
        random_scene(np.random.default_rng(0), 3, 256, 256, "uint8"),
        compress="deflate",
    )
    data = good.read_bytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "o.tif"
    res = invoke(
        "predict",
        str(bad),
        "-o",
        str(out),
        "--model",
        model3,
        "--scheduler",
        sched,
        "--tile",
        "128",
    )
    assert_one_line_error(res, "cannot read window", "bad.tif", "corrupt")
    assert not out.exists()
    assert not list(tmp_path.glob(".o.tif*")), "temporary files left behind"


def test_band_count_mismatch_and_bad_bands(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str, sched: str
) -> None:
    scene = str(scene_factory(bands=4, height=40, width=40))
    out = str(tmp_path / "o.tif")
    assert_one_line_error(
        invoke("predict", scene, "-o", out, "--model", model3, "--scheduler", sched),
        "4 band(s)",
        "expects 3",
        "--bands",
    )
    assert_one_line_error(
        invoke(
            "predict", scene, "-o", out, "--model", model3, "--scheduler", sched, "--bands", "1,2"
        ),
        "expects 3",
    )
    assert_one_line_error(
        invoke(
            "predict", scene, "-o", out, "--model", model3, "--scheduler", sched, "--bands", "1,2,9"
        ),
        "out of range",
        "1 to 4",
    )
    assert not Path(out).exists()
    ok = invoke(
        "predict",
        scene,
        "-o",
        out,
        "--model",
        model3,
        "--scheduler",
        sched,
        "--bands",
        "4,2,1",
        "-q",
    )
    assert ok.exit_code == 0


def test_model_errors(tmp_path: Path, scene_factory: Callable[..., Path], sched: str) -> None:
    scene = str(scene_factory(bands=3, height=40, width=40))
    out = str(tmp_path / "o.tif")
    assert_one_line_error(
        invoke("predict", scene, "-o", out, "--model", "no-such-model", "--scheduler", sched),
        "unknown model",
        "s2-landcover-unet",
    )
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    assert_one_line_error(
        invoke("predict", scene, "-o", out, "--model", str(pickled), "--scheduler", sched),
        "code execution",
    )
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert_one_line_error(
        invoke("predict", scene, "-o", out, "--model", str(foreign), "--scheduler", sched),
        "not a geoseg model",
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a model")
    assert_one_line_error(
        invoke("predict", scene, "-o", out, "--model", str(junk), "--scheduler", sched),
        "not a geoseg model",
    )
    assert not Path(out).exists()


def test_output_path_errors(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str, sched: str
) -> None:
    scene = str(scene_factory(bands=3, height=40, width=40))
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"keep me")
    assert_one_line_error(
        invoke("predict", scene, "-o", str(existing), "--model", model3, "--scheduler", sched),
        "exists",
        "--overwrite",
    )
    assert existing.read_bytes() == b"keep me"
    assert_one_line_error(
        invoke(
            "predict",
            scene,
            "-o",
            str(tmp_path / "nope" / "o.tif"),
            "--model",
            model3,
            "--scheduler",
            sched,
        ),
        "does not exist",
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: directory permissions are not enforced")
        assert_one_line_error(
            invoke(
                "predict", scene, "-o", str(ro / "o.tif"), "--model", model3, "--scheduler", sched
            ),
            "not writable",
        )
    finally:
        ro.chmod(0o700)


def test_tiling_errors_name_a_valid_value(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str, sched: str
) -> None:
    scene = str(scene_factory(bands=3, height=40, width=40))
    out = str(tmp_path / "o.tif")
    r = invoke("predict", scene, "-o", out, "--model", model3, "--scheduler", sched, "--tile", "30")
    assert_one_line_error(r, "--tile", "use --tile")
    r = invoke("predict", scene, "-o", out, "--model", model3, "--scheduler", sched, "--tile", "66")
    assert_one_line_error(r, "not a multiple", "use --tile 64")
    r = invoke(
        "predict", scene, "-o", out, "--model", model3, "--scheduler", sched, "--margin", "5"
    )
    assert_one_line_error(r, "--margin", "use --margin 8")
    assert not Path(out).exists()


def test_unreachable_scheduler(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str
) -> None:
    scene = str(scene_factory(bands=3, height=40, width=40))
    out = tmp_path / "o.tif"
    r = invoke(
        "predict", scene, "-o", str(out), "--model", model3, "--scheduler", "tcp://127.0.0.1:9"
    )
    assert_one_line_error(r, "cannot reach the Dask scheduler", "127.0.0.1:9")
    assert not out.exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_run_leaves_nothing_at_the_output_path(
    tmp_path: Path, model_factory: Callable[..., Path], sig: str
) -> None:
    import signal
    import subprocess
    import sys
    import time

    # big enough that the default (in-process) run is still writing when the signal comes
    scene = write_raster(
        tmp_path / "big.tif", random_scene(np.random.default_rng(3), 3, 3072, 3072, "uint8")
    )
    out = tmp_path / "o.tif"
    cmd = [
        sys.executable,
        "-m",
        "geoseg.cli.main",
        "predict",
        str(scene),
        "-o",
        str(out),
        "--model",
        str(model_factory(in_channels=3)),
        "--tile",
        "128",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".o.tif.*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    if sig == "SIGTERM":  # unwound: temporary files removed too
        assert not list(tmp_path.glob(".o.tif.*"))


def test_gdal_virtual_paths_are_read_by_the_workers(
    tmp_path: Path, scene_factory: Callable[..., Path], model3: str, sched: str
) -> None:
    import zipfile

    scene = scene_factory(bands=3, height=50, width=60)
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(scene, "inside/scene.tif")
    out = tmp_path / "o.tif"
    r = invoke(
        "predict",
        f"/vsizip/{archive}/inside/scene.tif",
        "-o",
        str(out),
        "--model",
        model3,
        "--scheduler",
        sched,
        "-q",
    )
    assert r.exit_code == 0, r.stderr
    direct = tmp_path / "d.tif"
    invoke("predict", str(scene), "-o", str(direct), "--model", model3, "--scheduler", sched, "-q")
    with rasterio.open(out) as a, rasterio.open(direct) as b:
        assert (a.read() == b.read()).all() and a.transform == b.transform
