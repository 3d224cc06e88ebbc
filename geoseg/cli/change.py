"""``geoseg change``: a from-to raster and transition table between two class rasters."""

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
    workers_option,
)


@click.command("change")
@click.argument("before")
@click.argument("after")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="From-to class raster (COG on BEFORE's grid), one value per class pair that occurs.",
)
@click.option(
    "--table",
    default=None,
    type=click.Path(dir_okay=False),
    help="Transition table: .csv or .parquet (pixels, m² and ha per class pair).",
)
@click.option("--changes-only", is_flag=True, help="Write unchanged pixels as nodata.")
@click.option(
    "--vector",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write polygons of the changes (format by extension, as 'geoseg vectorize').",
)
@vector_options
@workers_option("Local Dask worker processes (default: one per core).")
@scheduler_option
@overwrite_option
@quiet_option
@report_errors
def change_command(
    before: str,
    after: str,
    output: str,
    table: str | None,
    changes_only: bool,
    vector: str | None,
    workers: int | None,
    scheduler: str | None,
    overwrite: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Class change from BEFORE to AFTER (classes matched by name; AFTER resampled onto BEFORE's
    grid by nearest neighbour when they differ)."""
    from geoseg.results.change import change

    result = change(
        before,
        after,
        output,
        table=table,
        changes_only=changes_only,
        vector=vector,
        vector_options=take_vector_options(options),
        overwrite=overwrite,
        workers=workers,
        scheduler=scheduler,
        quiet=quiet,
    )
    if not quiet:
        changed = sum(r["area_m2"] for r in result.rows if r["changed"])
        click.echo(
            f"wrote {result.output}: {changed / 1e4:.2f} ha changed of "
            f"{result.valid_area_m2 / 1e4:.2f} ha in {result.seconds:.1f} s",
            err=True,
        )
