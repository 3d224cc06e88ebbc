"""Options shared by several commands, and the one place library errors become Click errors."""

from __future__ import annotations

import functools
import json
import signal
import threading
import warnings
from typing import Any, Callable, TypeVar

import click

from geoseg.errors import GeosegError, GeosegWarning

F = TypeVar("F", bound=Callable[..., Any])


def report_errors(func: F) -> F:
    """Run a command body: GeosegError -> one-line ClickException; geoseg warnings -> stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _terminate_as_interrupt()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GeosegWarning)
            try:
                return func(*args, **kwargs)
            except GeosegError as exc:
                raise click.ClickException(str(exc)) from exc
            except MemoryError as exc:
                raise click.ClickException(
                    "out of memory; lower --batch-size or --tile, or use fewer --workers"
                ) from exc
            finally:
                for w in caught:
                    if issubclass(w.category, GeosegWarning):
                        click.echo(f"Warning: {w.message}", err=True)

    return wrapper  # type: ignore[return-value]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate_as_interrupt() -> None:
    """Let SIGTERM (a scheduler's or a user's kill) unwind like Ctrl-C, so temporary files are
    removed and nothing is left at the output path."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace output files that already exist."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
verbose_option = click.option(
    "--verbose", "-v", is_flag=True, help="Also show the local Dask workers' own logs on stderr."
)
device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where the network runs; auto uses CUDA when present.",
)
workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="Local Dask worker processes (default: half the cores, at least one).",
)
scheduler_option = click.option(
    "--scheduler", metavar="ADDRESS", default=None,
    help="Address of an existing Dask scheduler (tcp://host:8786); default: a local cluster.",
)


def auto_or_int(value: str, minimum: int, hint: str) -> int | str:
    """``auto``, or an integer of at least ``minimum``, for the option ``hint``."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not 'auto' or a whole number", param_hint=hint) from None
    if n < minimum:
        raise click.BadParameter(f"must be 'auto' or >= {minimum}, got {n}", param_hint=hint)
    return n


def json_object(text: str | None, hint: str) -> dict[str, Any]:
    """A JSON object given on the command line (empty when not given)."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from None
    if not isinstance(value, dict):
        raise click.BadParameter('give a JSON object, e.g. \'{"depth": 4}\'', param_hint=hint)
    return value
