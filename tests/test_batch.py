"""``geoseg batch``: once per scene, resumable after SIGKILL, failures isolated, job file checked."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner
from rio_cogeo.cogeo import cog_validate

from geoseg.cli.main import cli
from geoseg.errors import JobError, JobLockedError
from geoseg.jobs.batch.load import load_job
from geoseg.jobs.lock import job_lock
from geoseg.jobs.run import run_batch
from tests.conftest import random_scene, write_raster


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.name not in ("batch-report.json", "report.html")
    }


@pytest.fixture
def job(tmp_path: Path, model_factory: Callable[..., Path]) -> Path:
    rng = np.random.default_rng(11)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(3):
        write_raster(incoming / f"scene{i}.tif", random_scene(rng, 3, 96 + 16 * i, 120, "uint8"))
    path = tmp_path / "job.yaml"
    path.write_text(f"""
scenes: [incoming/*.tif]
model: {model_factory(in_channels=3)}
output: {{folder: out}}
predict: {{tile: 64, probabilities: true}}
vector: {{format: gpkg, simplify: 2}}
workers: 1
""")
    return path


def test_batch_writes_everything_then_skips_everything(
    tmp_path: Path, job: Path, dask_client: Any
) -> None:
    report = run_batch(job, client=dask_client)
    assert (report.count("done"), report.count("failed")) == (3, 0)
    out = tmp_path / "out"
    for i in range(3):
        assert cog_validate(str(out / f"scene{i}-classes.tif"))[0]
        assert (out / f"scene{i}-probabilities.tif").exists() and (
            out / f"scene{i}-classes.gpkg"
        ).exists()
        item = json.loads((out / f"scene{i}-classes.stac.json").read_text())
        assert (
            item["stac_version"] == "1.0.0"
            and item["assets"]["classes"]["href"] == f"scene{i}-classes.tif"
        )
        assert "polygons" in item["assets"] and item["properties"]["geoseg:model_sha256"]
        assert -90 <= item["bbox"][1] <= 90
    first = digest(out)
    again = run_batch(job, client=dask_client)
    assert again.count("skipped") == 3 and again.count("done") == 0
    assert digest(out) == first
    forced = run_batch(job, force=True, client=dask_client)
    assert forced.count("done") == 3 and digest(out) == first, (
        "a rerun must give byte-identical outputs"
    )
    report_json = json.loads((out / "batch-report.json").read_text())
    assert report_json["done"] == 3


def test_sigkill_then_rerun_gives_identical_outputs(
    tmp_path: Path, job: Path, dask_client: Any
) -> None:
    # one scene at a time, so the job is still running when the first scene's record appears
    job.write_text(job.read_text() + "concurrency: 1\n")
    reference = tmp_path / "reference"
    ref_job = tmp_path / "ref.yaml"
    ref_job.write_text(job.read_text().replace("folder: out", f"folder: {reference}"))
    run_batch(ref_job, client=dask_client)
    cmd = [sys.executable, "-m", "geoseg.cli.main", "batch", str(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "scene0-classes.tif.geoseg.json").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*.geoseg.json")))
    assert 1 <= done_before < 3
    report = run_batch(job, client=dask_client)
    assert report.count("skipped") == done_before and report.count("done") == 3 - done_before
    ref = digest(reference)
    got = digest(out)
    for name in ref:
        if name.endswith(".stac.json") or name.endswith(".geoseg.json"):
            continue  # these name their own folder's files; compared below without paths
        assert got[name] == ref[name], name
    assert not [p for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_bad_scene_fails_alone(tmp_path: Path, job: Path, dask_client: Any) -> None:
    (tmp_path / "incoming" / "broken.tif").write_bytes(b"II*\x00garbage")
    report = run_batch(job, client=dask_client)
    assert report.count("done") == 3 and report.count("failed") == 1
    failed = [o for o in report.outcomes if o.status == "failed"][0]
    assert "broken.tif" in failed.scene and failed.error and "\n" not in failed.error
    assert not (tmp_path / "out" / "broken-classes.tif").exists()
    r = CliRunner().invoke(cli, ["batch", str(job)])
    assert r.exit_code != 0 and "1 of 4 scene(s) failed" in r.stderr


def test_second_concurrent_run_is_refused(tmp_path: Path, job: Path) -> None:
    spec = load_job(job)
    with job_lock(spec.folder, spec.path):
        with pytest.raises(JobLockedError, match="another run"):
            run_batch(job)
    assert not list(spec.folder.glob("*.tif"))


def test_job_file_problems_are_reported_together(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
scenes: [nothing/*.tif, 42]
model: missing.pt
output: {pattern: "x.png"}
predict: {tile: big, colour: red}
vector: {format: kml}
extra: 1
""")
    with pytest.raises(JobError) as err:
        load_job(bad)
    msg = str(err.value)
    for part in (
        "scenes[0]: 'nothing/*.tif' matches no file",
        "scenes[1]",
        "model: 'missing.pt'",
        "output.folder: required",
        "output.pattern",
        "predict.tile: expected int",
        "predict.colour: unknown key",
        "vector.format",
        "extra: unknown key",
    ):
        assert part in msg, part
    r = CliRunner().invoke(cli, ["batch", str(bad)])
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_scenes_at_once_give_the_same_bytes_as_one_at_a_time(
    tmp_path: Path, job: Path, dask_client: Any
) -> None:
    """A scene's outputs do not depend on which scenes ran beside it."""
    base = job.read_text()
    one, three = tmp_path / "one.yaml", tmp_path / "three.yaml"
    one.write_text(base.replace("folder: out", "folder: out1") + "concurrency: 1\n")
    three.write_text(base.replace("folder: out", "folder: out3") + "concurrency: 3\n")
    a = run_batch(one, client=dask_client)
    b = run_batch(three, client=dask_client)
    assert a.count("done") == b.count("done") == 3
    assert [o.scene for o in b.outcomes] == [o.scene for o in a.outcomes], (
        "the report keeps job order"
    )
    assert digest(tmp_path / "out1") == digest(tmp_path / "out3")


def test_concurrency_must_be_auto_or_positive(tmp_path: Path, job: Path) -> None:
    for bad, message in (
        ("0", "concurrency: scenes at once must be 1 or more"),
        ("many", "concurrency: expected int"),
    ):
        path = tmp_path / f"bad-{bad}.yaml"
        path.write_text(job.read_text() + f"concurrency: {bad}\n")
        with pytest.raises(JobError, match=message):
            load_job(path)
    assert load_job(job).concurrency == "auto"


def test_shared_slots_bound_every_stream_and_cancel_stops_them(dask_client: Any) -> None:
    """Two streams drawing on one budget never exceed it together; cancel() stops both at once."""
    import threading

    from geoseg.dask.stream import TaskSlots, stream

    slots = TaskSlots(2)
    peak, results, errors = [0], {0: [], 1: []}, []

    def consume(n: int) -> None:
        for _, r in stream(dask_client, time.sleep, [0.05] * 6, slots):
            peak[0] = max(peak[0], slots.in_flight)
            results[n].append(r)

    threads = [threading.Thread(target=consume, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results[0]) == len(results[1]) == 6 and 1 <= peak[0] <= 2
    assert slots.in_flight == 0 and slots.demand == 0

    slots = TaskSlots(2)

    def consume_until_cancelled() -> None:
        try:
            for _ in stream(dask_client, time.sleep, [0.5] * 40, slots):
                pass
        except KeyboardInterrupt:
            errors.append("interrupted")

    threads = [threading.Thread(target=consume_until_cancelled) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    slots.cancel()
    for t in threads:
        t.join(10)
    assert errors == ["interrupted", "interrupted"] and time.perf_counter() - t0 < 5


def test_ctrl_c_stops_every_scene_and_leaves_nothing_half_written(
    tmp_path: Path, job: Path, dask_client: Any
) -> None:
    rng = np.random.default_rng(5)
    for i in range(3, 5):  # larger scenes, so the interrupt lands while scenes are in flight
        write_raster(
            tmp_path / "incoming" / f"scene{i}.tif", random_scene(rng, 3, 192, 192, "uint8")
        )
    job.write_text(job.read_text().replace("workers: 1", "workers: 1\nconcurrency: 3"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoseg.cli.main", "batch", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "out"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(
            p.name.startswith(".") and ".part" in p.name for p in out.iterdir()
        ):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    assert not [p for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    for tif in out.glob("*.tif"):
        assert cog_validate(str(tif))[0], tif  # whatever reached an output path is complete
    assert len(list(out.glob("*.geoseg.json"))) < 5
    report = run_batch(job, client=dask_client)
    assert report.count("failed") == 0 and report.count("done") + report.count("skipped") == 5


def test_job_progress_line_counts_scenes_and_estimates_time_left() -> None:
    import io

    from geoseg.progress import JobProgress

    out = io.StringIO()
    bar = JobProgress(4, stream=out)
    bar.finished("skipped")
    bar.started()
    scene = bar.scene(2_000_000)
    scene.update(1, 1_000_000)
    assert bar.line().startswith("scenes: 0 done, 1 running, 2 left, 1 skipped")
    assert "elapsed" in bar.line() and "--:-- left" not in bar.line()
    bar.message("start x.tif")
    bar.finished("failed")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "start x.tif" in lines and "1 failed" in lines[-1]
    assert len(lines) == len(set(lines)), "no line is drawn twice"
