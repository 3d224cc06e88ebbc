"""``geoseg vectorize``: a class raster in, polygons out (GeoPackage, FlatGeobuf, ...)."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import (
    overwrite_option,
    quiet_option,
    report_errors,
    scheduler_option,
    take_vector_options,
    vector_options,
    verbose_option,
    workers_option,
)
from geoseg.options import VECTOR_FORMAT_HELP


@click.command("vectorize")
@click.argument("raster")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help=f"Polygon file; format by extension: {VECTOR_FORMAT_HELP}",
)
@vector_options
@click.option(
    "--probabilities",
    default=None,
    type=click.Path(dir_okay=False),
    help="Probabilities raster from 'geoseg predict', for a mean_probability attribute.",
)
@workers_option("Local Dask worker processes (default: one per core).")
@scheduler_option
@overwrite_option
@quiet_option
@verbose_option
@report_errors
def vectorize_command(
    raster: str,
    output: str,
    probabilities: str | None,
    workers: int | None,
    scheduler: str | None,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Polygonize a class RASTER: one polygon per connected region, merged across blocks."""
    from geoseg.vector.vectorize import vectorize

    result = vectorize(
        raster,
        output,
        probabilities=probabilities,
        overwrite=overwrite,
        workers=workers,
        scheduler=scheduler,
        quiet=quiet,
        verbose=verbose,
        **take_vector_options(options),
    )
    if not quiet:
        click.echo(
            f"wrote {result.output}: {result.polygons} polygons in {result.seconds:.1f} s", err=True
        )
