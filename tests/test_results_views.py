"""Quicklook PNGs, the batch job's class areas and stats, and its HTML report in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import shapely
from PIL import Image

from geoseg.classes import CLASS_NODATA
from geoseg.errors import JobError
from geoseg.jobs.batch.load import load_job
from geoseg.jobs.run import run_batch
from geoseg.results.quicklook import NODATA_RGB, quicklook
from tests.conftest import random_scene, write_raster
from tests.test_results_stats import class_raster, write_zones


def test_quicklook_shows_class_colours_and_nodata(tmp_path: Path) -> None:
    a = np.zeros((200, 300), np.uint8)
    a[:, 150:] = 1
    a[:50, :50] = CLASS_NODATA
    path = class_raster(tmp_path / "c.tif", a)
    png = quicklook(path, areas={0: {"class_name": "water", "pixels": 1, "area_m2": 2.5e6}})
    assert png == tmp_path / "c.png"
    im = np.asarray(Image.open(png).convert("RGB"))
    # the map's pixels: water on the left, forest on the right, nodata in the north-west corner
    colours = {tuple(c) for c in im.reshape(-1, 3)}
    assert {(0, 0, 255), (0, 128, 0), NODATA_RGB} <= colours
    assert oct(os.stat(png).st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(Exception, match="--overwrite"):
        quicklook(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def job(tmp_path: Path, model_factory: Callable[..., Path]) -> Path:
    rng = np.random.default_rng(5)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(2):
        write_raster(incoming / f"scene{i}.tif", random_scene(rng, 3, 64, 96, "uint8"))
    (incoming / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    zones = write_zones(
        tmp_path / "zones.gpkg",
        [
            shapely.box(300000, 5799680, 300960, 5800000),
            shapely.box(300000, 5799000, 300960, 5799680),
        ],
        ["north", "south"],
    )
    path = tmp_path / "job.yaml"
    path.write_text(f"""
scenes: [incoming/*.tif]
model: {model_factory(in_channels=3)}
output: {{folder: out}}
predict: {{tile: 64}}
stats: {{zones: {zones.name}, zone_field: name}}
workers: 1
""")
    return path


def test_batch_writes_stats_quicklooks_stac_counts_and_report(
    tmp_path: Path, job: Path, dask_client: Any
) -> None:
    import csv

    import rasterio

    report = run_batch(job, client=dask_client)
    assert (report.count("done"), report.count("failed")) == (2, 1)
    out = tmp_path / "out"
    for i in range(2):
        with rasterio.open(out / f"scene{i}-classes.tif") as src:
            a = src.read(1)
        counts = np.bincount(a[a != src.nodata].ravel(), minlength=256)
        item = json.loads((out / f"scene{i}-classes.stac.json").read_text())
        stac_counts = {
            c["value"]: c["count"] for c in item["assets"]["classes"]["classification:classes"]
        }
        assert (
            stac_counts == {v: counts[v] for v in stac_counts}
            and sum(stac_counts.values()) == counts.sum()
        )
        assert item["assets"]["thumbnail"]["href"] == f"scene{i}-classes.png"
        assert (out / f"scene{i}-classes.png").exists()
        with open(out / f"scene{i}-classes.stats.csv") as f:
            rows = list(csv.DictReader(f))
        assert {r["name"] for r in rows} == {"north", "south"}
        assert sum(float(r["area_m2"]) for r in rows) == pytest.approx(a.size * 100.0, rel=1e-6)
    data = json.loads((out / "batch-report.json").read_text())
    assert all(s["class_areas"] for s in data["scenes"] if s["status"] == "done")
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.index("broken.tif") < page.index("scene0.tif")  # failures first


def test_stats_section_problems_come_before_any_work(tmp_path: Path, job: Path) -> None:
    text = job.read_text().replace("zone_field: name", "zone_field: district")
    job.write_text(text + "quicklook: false\n")
    with pytest.raises(
        JobError, match="stats.zones: .*no field 'district'; their fields are: name"
    ):
        load_job(job)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(tmp_path: Path, job: Path, dask_client: Any) -> None:
    run_batch(job, client=dask_client)
    page = tmp_path / "out" / "report.html"
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    rows = re.findall(r'<tr class="scene (\w+)">', dom.stdout)
    assert rows == ["failed", "done", "done"]
    assert len(re.findall(r'<img src="data:image/png;base64,', dom.stdout)) == 2
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    keep = os.environ.get("GEOSEG_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert len({tuple(c) for c in im[::4, ::4].reshape(-1, 3)}) > 20  # not a blank page
