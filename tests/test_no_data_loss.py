"""Data a user has is never destroyed: outputs never land on inputs or on each other, reports
need --overwrite, job files are checked for collisions up front, commits are all or nothing,
partial scenes are redone, and one output folder has one writer (issue 13)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.windows import Window

import geoseg
from geoseg.cli.main import cli
from geoseg.errors import ChipError, JobError, JobLockedError, OutputError
from geoseg.fs import LOCK_NAME, publish_all
from geoseg.jobs.batch.job import outputs_for
from geoseg.jobs.batch.load import load_job
from geoseg.jobs.run import run_batch
from geoseg.raster.read import open_scene
from geoseg.raster.sink import RasterSink, open_sinks
from geoseg.training.evaluate import evaluate
from geoseg.vector.vectorize import vectorize
from tests.conftest import random_scene, write_raster


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_scene(path: Path, seed: int = 0, height: int = 64, width: int = 80) -> Path:
    return write_raster(path, random_scene(np.random.default_rng(seed), 3, height, width, "uint8"))


# 1. output onto input, or onto another output -------------------------------------------------


def test_predict_refuses_to_write_onto_its_scene_or_model(
    tmp_path: Path, model_factory: Callable[..., Path], dask_client: Any
) -> None:
    scene = small_scene(tmp_path / "a.tif")
    model = model_factory(in_channels=3)
    before = sha(scene)
    os.link(scene, tmp_path / "hardlink.tif")
    (tmp_path / "symlink.tif").symlink_to(scene)
    for out in (
        scene,
        tmp_path / "hardlink.tif",
        tmp_path / "symlink.tif",
        tmp_path / "sub" / ".." / "a.tif",
    ):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="same file as the scene"):
            geoseg.predict(
                str(scene), str(out), model=str(model), overwrite=True, client=dask_client
            )
    with pytest.raises(OutputError, match="same file as the model file"):
        geoseg.predict(
            str(scene),
            str(tmp_path / "c.tif"),
            model=str(model),
            probabilities=str(model),
            overwrite=True,
            client=dask_client,
        )
    with pytest.raises(OutputError, match="are the same file"):
        geoseg.predict(
            str(scene),
            str(tmp_path / "c.tif"),
            model=str(model),
            probabilities=str(tmp_path / "c.tif"),
            client=dask_client,
        )
    assert sha(scene) == before
    r = CliRunner().invoke(
        cli, ["predict", str(scene), "-o", str(scene), "--overwrite", "--model", str(model)]
    )
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1 and "same file" in r.stderr
    assert sha(scene) == before


def test_vectorize_and_evaluate_refuse_their_inputs_as_outputs(tmp_path: Path) -> None:
    classes = write_raster(tmp_path / "pred.tif", np.arange(64, dtype=np.uint8).reshape(8, 8) % 3)
    ref = write_raster(tmp_path / "ref.tif", np.arange(64, dtype=np.uint8).reshape(8, 8) % 2)
    before = sha(classes)
    (tmp_path / "poly.gpkg").symlink_to(classes)
    with pytest.raises(OutputError, match="same file as the class raster"):
        vectorize(classes, tmp_path / "poly.gpkg", overwrite=True)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        evaluate(classes, ref, json_path=classes)
    with pytest.raises(OutputError, match="same file as the prediction"):
        evaluate(classes, ref, json_path=classes, overwrite=True)
    assert sha(classes) == before
    # 7. reports follow the rule of every output: an existing file needs --overwrite
    report = tmp_path / "report.json"
    report.write_text("mine")
    r = CliRunner().invoke(cli, ["evaluate", str(classes), str(ref), "--json", str(report)])
    assert r.exit_code != 0 and "--overwrite" in r.stderr and report.read_text() == "mine"
    r = CliRunner().invoke(
        cli, ["evaluate", str(classes), str(ref), "--json", str(report), "--overwrite"]
    )
    assert r.exit_code == 0, r.output
    assert "miou" in json.loads(report.read_text())


def test_chip_refuses_inputs_inside_the_folders_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "chips"
    (out / "images").mkdir(parents=True)
    image = small_scene(out / "images" / "img.tif")
    labels = write_raster(tmp_path / "lab.tif", np.ones((64, 80), np.uint8))
    with pytest.raises(OutputError, match="lies inside the chips image folder"):
        from geoseg.training.chips import make_chips

        make_chips([(str(image), str(labels))], out, size=32)
    with pytest.raises((OutputError, ChipError), match="same file"):
        make_chips([(str(out / "chips.json"), str(labels))], out, size=32)


# 3. collisions and pattern fields, found before any work --------------------------------------


def job_file(
    tmp_path: Path,
    model: Path,
    scenes: str,
    folder: str,
    pattern: str | None = None,
    extra: str = "",
) -> Path:
    path = tmp_path / "job.yaml"
    pattern_line = f", pattern: {json.dumps(pattern)}" if pattern is not None else ""
    path.write_text(
        f"scenes: {scenes}\nmodel: {model}\noutput: {{folder: {folder}{pattern_line}}}\n"
        f"predict: {{tile: 64, probabilities: true}}\n{extra}"
    )
    return path


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{stem}.tif", "would overwrite the scene of scenes[0] (a.tif)"),
        ("{{stem}}.tif", "output.pattern: a file name ending in .tif that contains {stem}"),
        ("{stem}_{date}.tif", "output.pattern: unknown field(s) {date}"),
        ("{stem}-{0}.tif", "output.pattern: unknown field(s) {0}"),
        ("{stem.tif", "output.pattern: '{stem.tif' is not a valid pattern"),
    ],
)
def test_job_patterns_that_would_destroy_or_crash_are_refused_with_their_place(
    tmp_path: Path, model_factory: Callable[..., Path], pattern: str, message: str
) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    small_scene(scenes / "a.tif")
    small_scene(scenes / "b.tif")
    before = {p.name: sha(p) for p in scenes.iterdir()}
    job = job_file(tmp_path, model_factory(in_channels=3), "[scenes/*.tif]", "scenes", pattern)
    with pytest.raises(JobError) as err:
        load_job(job)
    assert message in str(err.value)
    r = CliRunner().invoke(cli, ["batch", str(job)])
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: sha(p) for p in scenes.iterdir()} == before


def test_job_output_names_are_checked_against_each_other(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    model = model_factory(in_channels=3)
    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    small_scene(tmp_path / "s" / "x-classes.tif")
    small_scene(tmp_path / "s" / "x-probabilities.tif")
    job = load_job(job_file(tmp_path, model, "[s/*.tif]", "out"))
    names = [p.name for s in job.scenes for p in outputs_for(job, s).values()]
    assert len(names) == len(set(names)) and "x-classes-probabilities.tif" in names
    small_scene(tmp_path / "t" / "x-classes.tif")
    with pytest.raises(
        JobError,
        match=r"output: the classes output of scenes\[1\] \(x-classes.tif\) .*would "
        r"overwrite the classes output of scenes\[0\]",
    ):
        load_job(job_file(tmp_path, model, "[s/*.tif, t/*.tif]", "out"))


# 2. outputs are not re-read as scenes ---------------------------------------------------------


def test_outputs_in_the_scene_folder_are_not_taken_for_scenes(
    tmp_path: Path, model_factory: Callable[..., Path], dask_client: Any
) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    small_scene(scenes / "a.tif")
    job = job_file(tmp_path, model_factory(in_channels=3), "[scenes/*.tif]", "scenes")
    first = run_batch(job, client=dask_client)
    assert (first.count("done"), first.count("failed")) == (1, 0)
    assert (scenes / "a-classes.tif").exists() and (scenes / "a-probabilities.tif").exists()
    (scenes / "a.tif").rename(tmp_path / "a.tif")  # the scene is gone; its outputs stay
    assert load_job(job).scenes == [], "last run's class and probability rasters are not scenes"
    (tmp_path / "a.tif").rename(scenes / "a.tif")
    again = run_batch(job, client=dask_client)
    assert [o.status for o in again.outcomes] == ["skipped"]
    listed = job_file(
        tmp_path, model_factory(in_channels=3), "[scenes/a.tif, scenes/a-classes.tif]", "scenes"
    )
    with pytest.raises(
        JobError, match=r"scenes\[1\]: .*a-classes.tif is the classes output of scenes\[0\]"
    ):
        load_job(listed)
    assert not (scenes / LOCK_NAME).exists()


# 7. the batch report ------------------------------------------------------------------------


def test_batch_report_replaces_only_its_own_report(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    (tmp_path / "s").mkdir()
    small_scene(tmp_path / "s" / "a.tif")
    job = job_file(tmp_path, model_factory(in_channels=3), "[s/*.tif]", "out")
    other = tmp_path / "notes.json"
    other.write_text("my notes")
    r = CliRunner().invoke(cli, ["batch", str(job), "--report", str(other)])
    assert r.exit_code != 0 and "--overwrite" in r.stderr and other.read_text() == "my notes"
    with pytest.raises(OutputError, match="same file as the scene"):
        run_batch(job, report_path=tmp_path / "s" / "a.tif", overwrite=True)
    assert not (tmp_path / "out").exists()


# 5. all or nothing ---------------------------------------------------------------------------


def test_a_failed_commit_leaves_the_previous_outputs_exactly_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = open_scene(small_scene(tmp_path / "scene.tif"))
    classes, probs = tmp_path / "c.tif", tmp_path / "p.tif"
    classes.write_bytes(b"old classes")
    probs.write_bytes(b"old probabilities")
    real_prepare = RasterSink.prepare

    def disk_full(self: RasterSink) -> Path:
        if self.path == probs:
            raise OSError(28, "No space left on device")
        return real_prepare(self)

    monkeypatch.setattr(RasterSink, "prepare", disk_full)
    with pytest.raises(OSError, match="No space"):
        with open_sinks(
            lambda: RasterSink(classes, scene, 1, 255), lambda: RasterSink(probs, scene, 2, None)
        ) as s:
            for sink in s:
                sink.write(np.zeros((sink._dst.count, 64, 80), np.uint8), Window(0, 0, 80, 64))
    assert classes.read_bytes() == b"old classes" and probs.read_bytes() == b"old probabilities"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "p.tif", "scene.tif"]

    # a rename that fails half-way undoes the ones before it
    new = [tmp_path / "new-c", tmp_path / "new-p"]
    for p in new:
        p.write_bytes(b"new")
    real_replace = os.replace

    def fail_second(src: Any, dst: Any) -> None:
        if Path(dst) == probs:
            raise OSError(5, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="I/O error"):
        publish_all([(new[0], classes), (new[1], probs)])
    assert classes.read_bytes() == b"old classes" and probs.read_bytes() == b"old probabilities"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_polygon_step_puts_the_previous_rasters_back(
    tmp_path: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene = small_scene(tmp_path / "s.tif")
    outs = {name: tmp_path / name for name in ("c.tif", "p.tif", "c.gpkg", "c.tif.skipped.json")}
    for path in outs.values():
        path.write_bytes(b"old " + path.name.encode())

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("geoseg.vector.vectorize.vectorize", disk_full)
    with pytest.raises(OSError, match="No space"):
        geoseg.predict(
            str(scene),
            str(outs["c.tif"]),
            model=str(model_factory(in_channels=3)),
            tile=64,
            probabilities=str(outs["p.tif"]),
            vector=str(outs["c.gpkg"]),
            overwrite=True,
            client=dask_client,
        )
    for path in outs.values():
        assert path.read_bytes() == b"old " + path.name.encode(), path.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# 8. partial scenes --------------------------------------------------------------------------


def test_a_scene_with_skipped_tiles_is_recorded_partial_and_redone(
    tmp_path: Path, model_factory: Callable[..., Path], dask_client: Any
) -> None:
    from tests.test_faults import scene_with_corrupt_block

    (tmp_path / "s").mkdir()
    scene_with_corrupt_block(tmp_path / "s" / "bad.tif")
    job = job_file(tmp_path, model_factory(in_channels=3), "[s/*.tif]", "out")
    job.write_text(job.read_text().replace("probabilities: true", "on_error: skip"))
    first = run_batch(job, client=dask_client)
    assert [o.status for o in first.outcomes] == ["partial"] and "nodata" in (
        first.outcomes[0].error or ""
    )
    record = json.loads((tmp_path / "out" / "bad-classes.tif.geoseg.json").read_text())
    assert record["partial"]["skipped_windows"] >= 1
    assert json.loads((tmp_path / "out" / "batch-report.json").read_text())["partial"] == 1
    again = run_batch(job, client=dask_client)
    assert [o.status for o in again.outcomes] == ["partial"], "a partial scene must be redone"


# 4. one folder, one writer ------------------------------------------------------------------


def test_a_live_run_in_the_output_folder_keeps_a_job_out(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    (tmp_path / "s").mkdir()
    small_scene(tmp_path / "s" / "a.tif")
    out = tmp_path / "out"
    out.mkdir()
    job = job_file(tmp_path, model_factory(in_channels=3), "[s/*.tif]", str(out))
    live_part = out / ".other-classes.tif.abc.part.tif"
    live_part.write_bytes(b"a live run's temporary file")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from geoseg.fs import folder_lock\n"
            f"with folder_lock(pathlib.Path({str(out)!r}), exclusive=False):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(JobLockedError, match="another run of geoseg is writing into"):
            run_batch(job)
        assert live_part.exists() and not [
            p for p in out.glob("*.tif") if not p.name.startswith(".")
        ]
    finally:
        holder.communicate(timeout=30)  # closes its stdin: it lets go and exits
    assert not (out / LOCK_NAME).exists(), "the last run to leave removes the lock file"
