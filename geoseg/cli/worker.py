"""``geoseg worker``: Dask workers for this machine's GPUs (or CPU) joining a scheduler."""

from __future__ import annotations

import click

from geoseg.cli.options import auto_or_int, report_errors


@click.command("worker")
@click.argument("scheduler")
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    help="Workers with GPU=1, one per device; auto = all CUDA devices, 0 = one CPU worker.",
)
@click.option(
    "--nthreads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads per worker (default 2 per GPU worker, all cores for a CPU worker).",
)
@click.option("--memory-limit", default="auto", show_default=True)
@click.option("--name", default=None, help="Worker name prefix.")
@click.option(
    "--dry-run", is_flag=True, help="Print the dask worker commands instead of running them."
)
@report_errors
def worker_command(
    scheduler: str,
    gpus: str,
    nthreads: int | None,
    memory_limit: str,
    name: str | None,
    dry_run: bool,
) -> None:
    """Start Dask workers joining SCHEDULER (tcp://host:8786) with the flags geoseg relies on."""
    from geoseg.dask.processes import gpu_count, run_workers, worker_commands

    count = auto_or_int(gpus, 0, "--gpus")
    n = gpu_count() if count == "auto" else int(count)
    commands = worker_commands(scheduler, n, nthreads, memory_limit, name)
    if dry_run:
        for c in commands:
            click.echo(
                " ".join(f"{k}={v}" for k, v in c.env) + (" " if c.env else "") + " ".join(c.args)
            )
        return
    run_workers(commands)
