"""``geoseg worker``: one Dask worker process per GPU (or one for the CPU) on a machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from geoseg.dask.session import cpu_count
from geoseg.errors import SchedulerError


@dataclass(frozen=True)
class WorkerCommand:
    """One ``dask worker`` process: its arguments and extra environment."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def gpu_count() -> int:
    """CUDA devices visible to this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_devices() -> list[str] | None:
    """The GPUs this process was given (``CUDA_VISIBLE_DEVICES``: indices, UUIDs or MIG
    instances, as SLURM and MIG set it), or None when it is not set."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    return [d.strip() for d in text.split(",") if d.strip()]


def worker_commands(
    scheduler: str,
    gpus: int,
    nthreads: int | None = None,
    memory_limit: str = "auto",
    name: str | None = None,
    visible: list[str] | None = None,
) -> list[WorkerCommand]:
    """The worker processes to start: one per GPU, each seeing only its device
    (``CUDA_VISIBLE_DEVICES``), advertising ``GPU=1``, 2 threads (one reads while the other
    computes); without GPUs one CPU worker. Any Dask deployment setting these flags works the same.

    Worker i sees the i-th GPU this process may use: the i-th entry of an inherited
    ``CUDA_VISIBLE_DEVICES`` (``visible``, read from the environment when None), else GPU i."""
    dask = [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        scheduler,
        "--memory-limit",
        memory_limit,
    ]
    if gpus > 0:
        devices = visible if visible is not None else visible_devices()
        if devices is not None and gpus > len(devices):
            raise SchedulerError(
                f"{gpus} GPU workers asked for, but CUDA_VISIBLE_DEVICES gives this process "
                f"{len(devices)} GPU(s) ({','.join(devices) or 'none'}); ask for at most {len(devices)}"
            )
        return [
            WorkerCommand(
                tuple(
                    dask
                    + ["--nthreads", str(nthreads or 2), "--resources", "GPU=1"]
                    + (["--name", f"{name}-gpu{i}"] if name else [])
                ),
                (("CUDA_VISIBLE_DEVICES", devices[i] if devices is not None else str(i)),),
            )
            for i in range(gpus)
        ]
    return [
        WorkerCommand(
            tuple(
                dask
                + ["--nthreads", str(nthreads or cpu_count())]
                + (["--name", f"{name}-cpu"] if name else [])
            )
        )
    ]


def run_workers(commands: list[WorkerCommand]) -> int:
    """Run the workers until they exit or this process is told to stop; returns their worst code."""
    procs = [subprocess.Popen(list(c.args), env={**os.environ, **dict(c.env)}) for c in commands]

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGTERM, previous)
    bad = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if bad and all(c != 0 for c in codes):
        raise SchedulerError(
            f"the Dask workers exited with code {bad[0]}; check that the scheduler address is right "
            "and reachable from this machine"
        )
    return 0
