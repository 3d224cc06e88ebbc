"""``geoseg stats``: class areas of a class raster, in all and per zone."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import output_option, report_errors, run_options, take_run_options


@click.command("stats")
@click.argument("classes")
@output_option(
    "Table: .csv or .parquet (a row per zone and class), or .gpkg (the zones with a "
    "<class>_m2 column per class; needs --zones)."
)
@click.option("--zones", default=None, help="Polygons (any OGR file, any CRS) to count per zone.")
@click.option(
    "--zone-field",
    default=None,
    help="The zones' field that names them (default: their feature id).",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=64),
    default=None,
    help="Pixels per block task side (default: about 4096, aligned to the raster's tiles).",
)
@run_options(
    "Local Dask worker processes (default: none; one worker in this process, a thread per core)."
)
@report_errors
def stats_command(
    classes: str,
    output: str,
    zones: str | None,
    zone_field: str | None,
    block_size: int | None,
    **options: Any,
) -> None:
    """Pixels, m², ha and share of each class of a class raster CLASSES (per zone with --zones)."""
    from geoseg.results.stats import stats

    run = take_run_options(options)
    result = stats(
        classes, output, zones=zones, zone_field=zone_field, block_size=block_size, **run
    )
    if not run["quiet"]:
        click.echo(
            f"wrote {result.output}: {len(result.rows)} rows, {result.valid_area_m2 / 1e6:.4f} km² "
            f"counted in {result.seconds:.1f} s",
            err=True,
        )
