"""``geoseg change``: a from-to raster and transition table between two class rasters."""

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
    vector_output_option,
)


@click.command("change")
@click.argument("before")
@click.argument("after")
@output_option("From-to class raster (COG on BEFORE's grid), one value per class pair that occurs.")
@click.option(
    "--table",
    default=None,
    type=click.Path(dir_okay=False),
    help="Transition table: .csv or .parquet (pixels, m² and ha per class pair).",
)
@click.option("--changes-only", is_flag=True, help="Write unchanged pixels as nodata.")
@vector_output_option("the changes")
@vector_options
@run_options(
    "Local Dask worker processes (default: none; one worker in this process, a thread per core)."
)
@report_errors
def change_command(
    before: str,
    after: str,
    output: str,
    table: str | None,
    changes_only: bool,
    vector: str | None,
    **options: Any,
) -> None:
    """Class change from BEFORE to AFTER (classes matched by name; AFTER resampled onto BEFORE's
    grid by nearest neighbour when they differ)."""
    from geoseg.results.change import change

    run = take_run_options(options)
    result = change(
        before,
        after,
        output,
        table=table,
        changes_only=changes_only,
        vector=vector,
        vector_options=take_vector_options(options),
        **run,
    )
    if not run["quiet"]:
        changed = sum(r["area_m2"] for r in result.rows if r["changed"])
        click.echo(
            f"wrote {result.output}: {changed / 1e4:.2f} ha changed of "
            f"{result.valid_area_m2 / 1e4:.2f} ha in {result.seconds:.1f} s",
            err=True,
        )
