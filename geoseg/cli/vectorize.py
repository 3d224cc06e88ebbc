"""``geoseg vectorize``: a class raster in, polygons out (GeoPackage, FlatGeobuf, ...)."""

from __future__ import annotations

import click

from geoseg.cli.options import (
    overwrite_option, quiet_option, report_errors, scheduler_option, verbose_option, workers_option,
)

connectivity_option = click.option("--connectivity", type=click.Choice(["4", "8"]), default="4", show_default=True,
                                   help="Pixel neighbourhood of a region (GDAL's default is 4).")
skip_option = click.option("--skip-class", "skip_classes", type=int, multiple=True,
                           help="Class value to leave out (repeatable), e.g. background.")
min_area_option = click.option("--min-area", type=click.FloatRange(min=0), default=0.0, show_default=True,
                               help="Merge regions smaller than this (square CRS units) into a neighbour.")
simplify_option = click.option("--simplify", type=click.FloatRange(min=0), default=None,
                               help="Simplify the layer as a coverage with this tolerance (CRS units).")


@click.command("vectorize")
@click.argument("raster")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Polygon file; format by extension: .gpkg .fgb .geojson .shp .parquet")
@connectivity_option
@skip_option
@min_area_option
@simplify_option
@click.option("--probabilities", default=None, type=click.Path(dir_okay=False),
              help="Probabilities raster from 'geoseg predict', for a mean_probability attribute.")
@click.option("--block-size", type=click.IntRange(min=64), default=None, help="Block size in pixels (default ~1024).")
@workers_option
@scheduler_option
@overwrite_option
@quiet_option
@verbose_option
@report_errors
def vectorize_command(raster: str, output: str, connectivity: str, skip_classes: tuple[int, ...],
                      min_area: float, simplify: float | None, probabilities: str | None,
                      block_size: int | None, workers: int | None, scheduler: str | None,
                      overwrite: bool, quiet: bool, verbose: bool) -> None:
    """Polygonize a class RASTER: one polygon per connected region, merged across blocks."""
    from geoseg.vectorize import vectorize

    result = vectorize(raster, output, connectivity=int(connectivity), skip_classes=skip_classes,
                       min_area=min_area, simplify=simplify, probabilities=probabilities,
                       overwrite=overwrite, block_size=block_size, workers=workers,
                       scheduler=scheduler, quiet=quiet, verbose=verbose)
    if not quiet:
        click.echo(f"wrote {result.output}: {result.polygons} polygons in {result.seconds:.1f} s", err=True)
