"""``geoseg vectorize``: a class raster in, polygons out (GeoPackage, FlatGeobuf, ...)."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import (
    output_option,
    report_errors,
    run_options,
    take_run_options,
    take_vector_options,
    vector_options,
)
from geoseg.options import VECTOR_FORMAT_HELP


@click.command("vectorize")
@click.argument("raster")
@output_option(f"Polygon file; format by extension: {VECTOR_FORMAT_HELP}")
@vector_options
@click.option(
    "--probabilities",
    default=None,
    type=click.Path(dir_okay=False),
    help="Probabilities raster from 'geoseg predict', for a mean_probability attribute.",
)
@run_options("Local Dask worker processes (default: one per core).", verbose=True)
@report_errors
def vectorize_command(
    raster: str,
    output: str,
    probabilities: str | None,
    **options: Any,
) -> None:
    """Polygonize a class RASTER: one polygon per connected region, merged across blocks."""
    from geoseg.vector.vectorize import vectorize

    run = take_run_options(options)
    result = vectorize(
        raster, output, probabilities=probabilities, **run, **take_vector_options(options)
    )
    if not run["quiet"]:
        click.echo(
            f"wrote {result.output}: {result.polygons} polygons in {result.seconds:.1f} s", err=True
        )
