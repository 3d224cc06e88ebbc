"""Errors stay one line: worker logs off the terminal, failing tiles not retried, a task that
kills its workers reported in one line or skipped as nodata (issue 13, item 13)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.errors import TileError
from geoseg.prediction import run as graph
from geoseg.prediction.plan import plan_tasks
from geoseg.prediction.tasks import TileTask
from geoseg.tiling import TileGrid
from tests.test_faults import scene_with_corrupt_block

CALLS: list[str] = []


def failing_task(task: TileTask) -> list[Any]:
    """Stands in for run_tile_task: a deterministic failure."""
    CALLS.append(task.scene)
    raise ValueError("always fails")


def killing_task(task: TileTask) -> list[Any]:
    """Stands in for run_tile_task: what the client gets when the task killed its workers."""
    from types import SimpleNamespace

    from distributed import KilledWorker

    raise KilledWorker(task.scene, SimpleNamespace(address="tcp://gone:1"), 3)  # type: ignore[arg-type]


def tasks(skip: bool, scene: str = "scene.tif") -> list[TileTask]:
    grid = TileGrid.create(40, 40, 32, 8, 8)
    return plan_tasks(grid, scene, [1], "m.pt", "0" * 64, "cpu", 1, False, 4, skip_errors=skip)


def test_a_failing_tile_is_not_retried(monkeypatch: pytest.MonkeyPatch, dask_client: Any) -> None:
    monkeypatch.setattr(graph, "run_tile_task", failing_task)
    CALLS.clear()
    with pytest.raises(ValueError, match="always fails"):
        list(graph.stream_tasks(dask_client, tasks(False)[:1], 1))
    assert CALLS == ["scene.tif"]


def test_killed_workers_are_one_line_or_nodata_under_skip(
    monkeypatch: pytest.MonkeyPatch, dask_client: Any
) -> None:
    monkeypatch.setattr(graph, "run_tile_task", killing_task)
    with pytest.raises(
        TileError, match=r"killer.tif: tiles at rows 0-\d+, columns 0-\d+ failed: the workers"
    ) as err:
        list(graph.stream_tasks(dask_client, tasks(False, "killer.tif"), 2))
    assert "\n" not in str(err.value) and "--on-error skip" in str(err.value)
    results = [
        r for batch in graph.stream_tasks(dask_client, tasks(True, "killer.tif"), 2) for r in batch
    ]
    assert len(results) == len(TileGrid.create(40, 40, 32, 8, 8))
    assert all(
        r.error and "workers running them died" in r.error and (r.classes == 255).all()
        for r in results
    )


def test_worker_tracebacks_stay_off_the_terminal(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    scene = scene_with_corrupt_block(tmp_path / "bad.tif")
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(tmp_path / "o.tif"),
            "--tile",
            "64",
            "--model",
            str(model_factory(in_channels=3)),
            "--workers",
            "1",
            "--quiet",
        ],
    )
    assert r.exit_code != 0
    assert "Compute Failed" not in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        line for line in r.stderr.strip().splitlines() if line.startswith("Error:")
    ]
    assert len(r.stderr.strip().splitlines()) == 1
