"""The ``geoseg`` command group."""

from __future__ import annotations

import click

from geoseg import __version__
from geoseg.cli.batch import batch_command
from geoseg.cli.change import change_command
from geoseg.cli.chip import chip_command
from geoseg.cli.demo import demo_command
from geoseg.cli.evaluate import evaluate_command
from geoseg.cli.map import map_command
from geoseg.cli.models import models_command
from geoseg.cli.onnx import export_command, import_command
from geoseg.cli.predict import predict_command
from geoseg.cli.stats import stats_command
from geoseg.cli.train import train_command
from geoseg.cli.vectorize import vectorize_command
from geoseg.cli.worker import worker_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
def cli() -> None:
    """geoseg: seamless tiled semantic segmentation of GeoTIFFs on Dask."""


cli.add_command(predict_command)
cli.add_command(map_command)
cli.add_command(models_command)
cli.add_command(chip_command)
cli.add_command(train_command)
cli.add_command(evaluate_command)
cli.add_command(demo_command)
cli.add_command(batch_command)
cli.add_command(vectorize_command)
cli.add_command(worker_command)
cli.add_command(export_command)
cli.add_command(import_command)
cli.add_command(stats_command)
cli.add_command(change_command)


def main() -> None:
    """The ``geoseg`` program: run the command, then leave without tearing the interpreter down.

    Python's teardown after torch, ONNX Runtime and Dask were imported (freeing every module's
    objects) took 0.4-0.6 s of every run, a tenth of predicting an 8192² scene with a cheap
    network. Nothing of the user's depends on it: every output is closed and committed before
    a command returns, and the exit handlers (logging, multiprocessing, Dask) still run, with
    the non-daemon threads joined, as in a normal exit.
    """
    import atexit
    import os
    import sys
    import threading

    from geoseg.memory import one_malloc_arena

    one_malloc_arena()
    code = 0
    try:
        cli.main(prog_name="geoseg")  # always ends in SystemExit (standalone mode)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message")
            print(exc.code, file=sys.stderr)
            code = 1
    # what Py_FinalizeEx does first: stop thread pools (concurrent.futures), join non-daemon
    # threads, then run the atexit handlers; only the freeing of every object is skipped
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (geoseg models | head)
            code = code or 1
    os._exit(code)


if __name__ == "__main__":  # python -m geoseg.cli.main
    main()
