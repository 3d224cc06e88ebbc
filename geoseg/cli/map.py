"""``geoseg map``: many scenes in, one seamless class raster over their region out."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from geoseg.cli.options import (
    overwrite_option,
    predict_options,
    quiet_option,
    report_errors,
    scheduler_option,
    take_predict_options,
    take_vector_options,
    vector_options,
    verbose_option,
    workers_option,
)
from geoseg.options import MapOptions, MapOrder, choices

_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(MapOptions)}


@click.command("map")
@click.argument("scenes", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    help="Class raster (COG) of the region: a path or s3://bucket/key.tif; with --cells, a folder or s3://bucket/prefix/.",
)
@click.option(
    "--model",
    "model",
    default=None,
    metavar="NAME_OR_PATH",
    help="Model file or built-in name (default: the built-in model).",
)
@click.option("--crs", default=None, metavar="CRS", help=_HELP["crs"])
@click.option(
    "--resolution",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=_HELP["resolution"],
)
@click.option(
    "--order",
    type=click.Choice(choices(MapOrder)),
    default="given",
    show_default=True,
    help=_HELP["order"],
)
@click.option("--aoi", default=None, metavar="FILE", help=_HELP["aoi"])
@predict_options
@workers_option(
    "Local Dask worker processes, 2 threads each (default: one worker in this process; see README)."
)
@scheduler_option
@click.option(
    "--probabilities",
    default=None,
    help="Also write per-class probabilities (uint8 0-255) to this COG (path or s3:// URL).",
)
@click.option(
    "--confidence",
    default=None,
    help="Also write the winning class's probability (one uint8 band, 1-255, 0 = nodata).",
)
@click.option(
    "--vector",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write polygons of the classes (.gpkg .fgb .shp .geojson .parquet).",
)
@vector_options
@overwrite_option
@quiet_option
@verbose_option
@report_errors
def map_command(
    scenes: tuple[str, ...],
    output: str,
    model: str | None,
    crs: str | None,
    resolution: float | None,
    order: str,
    aoi: str | None,
    workers: int | None,
    scheduler: str | None,
    probabilities: str | None,
    confidence: str | None,
    vector: str | None,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Segment the region SCENES cover into one seamless class raster (Cloud-Optimized GeoTIFF).

    SCENES are raster files or globs, STAC items or ItemCollections (files or URLs), and
    manifests (.txt, a path or URL a line); where they overlap, the first given (or with
    --order newest the newest) wins. See docs/map.md.
    """
    from geoseg.mapping import map as make_map

    result = make_map(
        list(scenes),
        output,
        model,
        take_predict_options(options),
        MapOptions(crs=crs, resolution=resolution, order=order, aoi=aoi),  # type: ignore[arg-type]
        workers=workers,
        scheduler=scheduler,
        probabilities=probabilities,
        confidence=confidence,
        overwrite=overwrite,
        quiet=quiet,
        vector=vector,
        vector_options=take_vector_options(options),
        verbose=verbose,
    )
    for window in result.skipped:
        click.echo(
            f"skipped window rows {window.row_off}-{window.row_off + window.height}, columns "
            f"{window.col_off}-{window.col_off + window.width} (nodata written)",
            err=True,
        )
    if not quiet:
        click.echo(
            f"wrote {result.output} from {result.extras['scenes']} scenes ({result.pixels / 1e6:.2f} MP in "
            f"{result.seconds:.1f} s, planned in {result.extras['planning_seconds']:.2f} s)",
            err=True,
        )
