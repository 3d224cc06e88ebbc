"""The ``geoseg`` command group."""

from __future__ import annotations

import click

from geoseg import __version__
from geoseg.cli.batch import batch_command
from geoseg.cli.chip import chip_command
from geoseg.cli.demo import demo_command
from geoseg.cli.evaluate import evaluate_command
from geoseg.cli.models import models_command
from geoseg.cli.onnx import export_command, import_command
from geoseg.cli.predict import predict_command
from geoseg.cli.train import train_command
from geoseg.cli.vectorize import vectorize_command
from geoseg.cli.worker import worker_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
def cli() -> None:
    """geoseg: seamless tiled semantic segmentation of GeoTIFFs on Dask."""


cli.add_command(predict_command)
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


if __name__ == "__main__":  # python -m geoseg.cli.main
    cli()
