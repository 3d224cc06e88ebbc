"""A real cluster on loopback: a ``dask scheduler`` process and two ``dask worker`` processes.

Predict through ``--scheduler`` equals the local result byte for byte, also when a worker is
SIGKILLed in the middle of the scene; losing the scheduler leaves nothing at the output path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import geoseg
from geoseg.errors import GeosegError
from tests.conftest import random_scene, write_raster

DASK = str(Path(sys.executable).with_name("dask"))


class LoopbackCluster:
    """Scheduler and worker processes started with the ``dask`` command line, as a user would."""

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = root
        self.file = root / "scheduler.json"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        common = {
            "cwd": root,
            "env": env,
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL,
        }
        self.scheduler = subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.file),
            ],
            **common,
        )
        self._wait(lambda: self.file.exists() and self.file.stat().st_size > 0, "scheduler")
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    "--scheduler-file",
                    str(self.file),
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                    "--memory-limit",
                    "3GB",
                ],
                **common,
            )
            for i in range(workers)
        ]
        from distributed import Client

        self.client = Client(self.address, timeout="20s", set_as_default=False)
        if workers:
            self.client.wait_for_workers(workers, timeout=60)

    @staticmethod
    def _wait(ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > end:
                raise TimeoutError(f"{what} did not start")
            time.sleep(0.1)

    def close(self) -> None:
        self.client.close()
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LoopbackCluster]:
    c = LoopbackCluster(tmp_path)
    yield c
    c.close()


@pytest.fixture(scope="module")
def scene_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A scene with a few hundred tiles, and its class raster from the local (in-process) path."""
    from tests.conftest import make_model_file

    root = tmp_path_factory.mktemp("cluster")
    model = make_model_file(root / "m.pt", 3)
    scene = write_raster(
        root / "scene.tif", random_scene(np.random.default_rng(11), 3, 480, 640, "uint8")
    )
    ref = root / "ref.tif"
    geoseg.predict(str(scene), str(ref), model=str(model), tile=96, workers=1)
    return scene, model, ref.read_bytes()


OPTIONS: dict[str, Any] = {"tile": 96, "tiles_per_task": 2, "max_in_flight": 4}


def test_predict_on_the_cluster_equals_the_local_result(
    cluster: LoopbackCluster, scene_and_reference: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    scene, model, reference = scene_and_reference
    out = tmp_path / "c.tif"
    geoseg.predict(str(scene), str(out), model=str(model), scheduler=cluster.address, **OPTIONS)
    assert out.read_bytes() == reference
    assert not list(tmp_path.glob(".*part*"))


def test_worker_killed_mid_scene_gives_the_identical_raster(
    cluster: LoopbackCluster, scene_and_reference: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    scene, model, reference = scene_and_reference
    out = tmp_path / "k.tif"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            geoseg.predict(
                str(scene), str(out), model=str(model), scheduler=cluster.address, **OPTIONS
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    pids = cluster.client.run(os.getpid)
    thread = threading.Thread(target=run)
    thread.start()
    end = time.monotonic() + 120
    busy: list[str] = []
    while not busy:
        assert time.monotonic() < end and thread.is_alive(), (
            "no worker got work while the run was going"
        )
        busy = [a for a, keys in cluster.client.processing().items() if keys]
        time.sleep(0.02)
    os.kill(pids[busy[0]], signal.SIGKILL)
    assert thread.is_alive(), "the run finished before the worker could be killed"
    thread.join(timeout=300)
    assert not errors, errors
    assert len(cluster.client.scheduler_info()["workers"]) == 1
    assert out.read_bytes() == reference


def test_losing_the_scheduler_leaves_no_output(
    cluster: LoopbackCluster, scene_and_reference: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    scene, model, _ = scene_and_reference
    out = tmp_path / "s.tif"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            geoseg.predict(
                str(scene), str(out), model=str(model), scheduler=cluster.address, **OPTIONS
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    end = time.monotonic() + 60
    while not any(cluster.client.processing().values()):
        assert time.monotonic() < end
        time.sleep(0.05)
    cluster.scheduler.kill()
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], GeosegError), errors
    assert "\\n" not in str(errors[0])
    assert not out.exists() and not list(tmp_path.glob(".*part*"))


def test_model_reaches_a_worker_without_the_file(cluster: LoopbackCluster, tmp_path: Path) -> None:
    """The plugin puts the model into each worker's cache once; a task naming a path the worker
    does not have still finds it by content hash."""
    from geoseg.dask.plugin import send_model
    from geoseg.models.checkpoint import file_sha256
    from geoseg.prediction.worker_models import worker_model
    from tests.conftest import make_model_file

    model = make_model_file(tmp_path / "gone.pt", 3, seed=5)
    sha = file_sha256(model)
    send_model(cluster.client, model, sha)
    shutil.move(model, tmp_path / "elsewhere.pt")
    got = cluster.client.run(lambda: worker_model(str(model), sha, "cpu").sha256)
    assert set(got.values()) == {sha} and len(got) == 2
    with pytest.raises(GeosegError, match="hash"):
        worker_model(str(tmp_path / "nothing.pt"), "0" * 64, "cpu")


def test_inference_asks_for_a_gpu_only_where_workers_offer_one(
    tmp_path: Path, dask_client: Any, model_factory: Callable[..., Path]
) -> None:
    from distributed import Client, LocalCluster

    from geoseg.prediction.run import gpu_resources

    assert gpu_resources(dask_client, "cuda") is None and gpu_resources(dask_client, "auto") is None
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            resources={"GPU": 1},
            dashboard_address=":0",
            silence_logs=40,
        ) as gpu_cluster,
        Client(gpu_cluster, set_as_default=False) as client,
    ):
        assert gpu_resources(client, "auto") == {"GPU": 1} and gpu_resources(client, "cpu") is None
        # the restricted tasks run there (on the CPU here, as this machine has no CUDA)
        scene = write_raster(
            tmp_path / "s.tif", random_scene(np.random.default_rng(0), 3, 40, 50, "uint8")
        )
        out = tmp_path / "o.tif"
        geoseg.predict(
            str(scene),
            str(out),
            model=str(model_factory(in_channels=3)),
            client=client,
            device="auto" if not __import__("torch").cuda.is_available() else "cuda",
        )
        assert out.exists()


def test_worker_commands_give_each_gpu_its_own_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg.dask.processes import worker_commands

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu = worker_commands("tcp://h:8786", 2)
    assert [dict(c.env)["CUDA_VISIBLE_DEVICES"] for c in gpu] == ["0", "1"]
    assert all(
        "--resources" in c.args and "GPU=1" in c.args and "tcp://h:8786" in c.args for c in gpu
    )
    (cpu,) = worker_commands("tcp://h:8786", 0, nthreads=3)
    assert "--resources" not in cpu.args and cpu.args[cpu.args.index("--nthreads") + 1] == "3"


def test_geoseg_worker_joins_a_scheduler_and_serves_predict(
    tmp_path: Path, model_factory: Callable[..., Path]
) -> None:
    cluster = LoopbackCluster(tmp_path, workers=0)
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("geoseg")),
            "worker",
            cluster.address,
            "--gpus",
            "0",
            "--nthreads",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cluster.client.wait_for_workers(1, timeout=60)
        scene = write_raster(
            tmp_path / "s.tif", random_scene(np.random.default_rng(0), 3, 40, 50, "uint8")
        )
        out = tmp_path / "o.tif"
        geoseg.predict(
            str(scene), str(out), model=str(model_factory(in_channels=3)), scheduler=cluster.address
        )
        assert out.exists()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        cluster.close()
