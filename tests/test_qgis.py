"""Outputs open in a real GIS: QGIS (headless, its own Python) sees valid, georeferenced, styled layers.

Marker ``qgis``; skipped when QGIS's Python bindings are absent (Debian: ``apt-get install
python3-qgis``). QGIS's Python is the system python3, so the check runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import rasterio

import geoseg
from geoseg.vector.vectorize import vectorize

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/usr/local/bin") or "/usr/bin/python3"
SCRIPT = Path(__file__).parent / "qgis" / "check_layers.py"


def _has_qgis() -> bool:
    try:
        return (
            subprocess.run(
                [SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=60
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _has_qgis(), reason="QGIS Python bindings not installed (python3-qgis)"),
]


def qgis_facts(*paths: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_RUNTIME_DIR": os.environ.get("TMPDIR", "/tmp"),
    }
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_outputs_open_in_qgis_styled_and_in_place(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    scene = scene_factory(bands=3, height=96, width=128, crs="EPSG:32633")
    classes, probs, gpkg = (
        tmp_path / "classes.tif",
        tmp_path / "probs.tif",
        tmp_path / "polygons.gpkg",
    )
    model = str(model_factory(in_channels=3))
    geoseg.predict(
        str(scene),
        str(classes),
        model=model,
        probabilities=str(probs),
        vector=str(gpkg),
        client=dask_client,
    )
    fgb = tmp_path / "polygons.fgb"
    vectorize(classes, fgb, client=dask_client)
    with rasterio.open(scene) as src:
        bounds = list(src.bounds)
    with rasterio.open(classes) as src:
        cmap = {str(v): "#%02x%02x%02x" % src.colormap(1)[v][:3] for v in (1, 2, 3, 4)}
    loaded = geoseg.load_model(model)
    names = {str(c.value): c.name for c in loaded.classes}
    facts = qgis_facts(classes, probs, gpkg, fgb)
    for path, f in facts.items():
        assert f["valid"], path
        assert f["crs"] == "EPSG:32633", path
        if f["kind"] == "raster":
            assert f["extent"] == pytest.approx(bounds), path
    c = facts[str(classes)]
    assert c["renderer"] == "paletted" and c["bands"] == 1
    assert {v: c["palette"][v] for v in cmap} == cmap
    assert facts[str(probs)]["bands"] == len(loaded.classes)
    for vec in (gpkg, fgb):
        v = facts[str(vec)]
        assert v["renderer"] == "categorizedSymbol" and v["attr"] == "class", vec
        assert v["features"] > 0
        assert {k: label for k, (label, _) in v["categories"].items()} == names
        assert {k: colour for k, (_, colour) in v["categories"].items()} == cmap
        # polygons lie inside the scene
        x0, y0, x1, y1 = v["extent"]
        assert (
            bounds[0] - 1e-6 <= x0 < x1 <= bounds[2] + 1e-6
            and bounds[1] - 1e-6 <= y0 < y1 <= bounds[3] + 1e-6
        )
