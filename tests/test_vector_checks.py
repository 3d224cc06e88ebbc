"""Vector options are checked before any prediction; polygon ids, shapefile names and GPU
numbering hold at the edges (issue 13, item 14)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import shapely

import geoseg
from geoseg.dask.processes import worker_commands
from geoseg.errors import GeosegError, JobError, SchedulerError
from geoseg.jobs.batch.load import load_job
from geoseg.vector.blocks import BlockResult
from geoseg.vector.merge import Polygon, merge_blocks
from geoseg.vector.vectorize import vectorize
from tests.conftest import random_scene, write_raster


@pytest.mark.parametrize(
    ("vector", "options", "message"),
    [
        ("p.geojson", {}, "GeoJSON holds WGS 84 (EPSG:4326) coordinates only"),
        ("p.parquet", {}, "GeoParquet output needs pyarrow"),
        (
            "p.gpkg",
            {"skip_classes": ("water",)},
            "--skip-classes must be a whole number, got 'water'",
        ),
        ("p.gpkg", {"connectivity": 6}, "unknown --connectivity 6"),
        ("p.gpkg", {"min_area": -1.0}, "--min-area must be at least 0"),
        ("p.gpkg", {"colour": "red"}, "unknown vector option"),
    ],
)
def test_predict_checks_vector_options_before_predicting(
    tmp_path: Path,
    model_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    vector: str,
    options: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    scene = write_raster(
        tmp_path / "s.tif", random_scene(np.random.default_rng(0), 3, 32, 32, "uint8")
    )
    started: list[str] = []
    monkeypatch.setattr(
        "geoseg.dask.session.connect", lambda *a, **k: started.append("cluster") or (None, None)
    )
    with pytest.raises(GeosegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        geoseg.predict(
            str(scene),
            str(tmp_path / "c.tif"),
            model=str(model_factory(in_channels=3)),
            vector=str(tmp_path / vector),
            vector_options=options,
        )
    assert not started and not list(tmp_path.glob("c.*"))


def test_batch_checks_vector_options_when_validating(
    tmp_path: Path, model_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    write_raster(tmp_path / "a.tif", random_scene(np.random.default_rng(0), 3, 32, 32, "uint8"))
    model = model_factory(in_channels=3)
    for vector, message in (
        ("{format: parquet}", "vector.format: GeoParquet output needs pyarrow"),
        ("{format: geojson}", "vector.format: a.tif: GeoJSON holds WGS 84"),
    ):
        job = tmp_path / "job.yaml"
        job.write_text(
            f"scenes: [a.tif]\nmodel: {model}\noutput: {{folder: out}}\nvector: {vector}\n"
        )
        with pytest.raises(JobError, match=message.replace("(", r"\(")):
            load_job(job)


def test_polygon_ids_do_not_overflow_on_very_tall_rasters() -> None:
    """One region running down 2100 block rows (2048 rows overflowed the old 64-bit ids)."""
    rows = 2100
    one = np.array([0, 1])

    def block(r: int) -> list[BlockResult]:
        square = shapely.to_wkb(shapely.box(0, r, 1, r + 1))
        return [
            BlockResult(
                r,
                0,
                np.array([0, 3]),
                np.array([0, 1]),
                None,
                {1: square},
                one[1:],
                one[1:],
                one[1:],
                one[1:],
            )
        ]

    out = list(merge_blocks((block(r) for r in range(rows)), 4, rows))
    assert len(out) == 1 and isinstance(out[0], Polygon)
    assert out[0].pixels == rows and out[0].geometry.area == pytest.approx(rows)


def test_shapefile_names_with_glob_characters_are_written(tmp_path: Path, dask_client: Any) -> None:
    classes = write_raster(
        tmp_path / "c.tif", np.kron(np.array([[1, 2], [2, 1]], np.uint8), np.ones((8, 8), np.uint8))
    )
    out = tmp_path / "zone[1]*?.shp"
    result = vectorize(classes, out, client=dask_client)
    assert result.polygons == 4
    assert {p.suffix for p in tmp_path.glob("zone*")} >= {".shp", ".shx", ".dbf", ".prj"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_geoseg_worker_keeps_the_gpus_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,MIG-5a1b")  # as SLURM or MIG hand them out
    gpu = worker_commands("tcp://h:8786", 2)
    assert [dict(c.env)["CUDA_VISIBLE_DEVICES"] for c in gpu] == ["3", "MIG-5a1b"]
    with pytest.raises(SchedulerError, match="gives this process 2 GPU"):
        worker_commands("tcp://h:8786", 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [dict(c.env)["CUDA_VISIBLE_DEVICES"] for c in worker_commands("tcp://h:8786", 2)] == [
        "0",
        "1",
    ]
