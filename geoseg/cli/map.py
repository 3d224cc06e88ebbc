"""``geoseg map``: many scenes in, one seamless class raster over their region out."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import (
    echo_skipped,
    map_options,
    model_option,
    report_errors,
    scene_output_option,
    scene_run_options,
    take_scene_run_options,
)
from geoseg.options import MapOptions, take_fields


@click.command("map")
@click.argument("scenes", nargs=-1, required=True)
@scene_output_option("of the region")
@model_option
@map_options
@scene_run_options()
@report_errors
def map_command(scenes: tuple[str, ...], output: str, model: str | None, **options: Any) -> None:
    """Segment the region SCENES cover into one seamless class raster (Cloud-Optimized GeoTIFF).

    SCENES are raster files or globs, STAC items or ItemCollections (files or URLs), and
    manifests (.txt, a path or URL a line); where they overlap, the first given (or with
    --order newest the newest) wins. See docs/map.md.
    """
    from geoseg.mapping import map as make_map

    grid = MapOptions(**take_fields(options, MapOptions))
    run = take_scene_run_options(options)
    result = make_map(list(scenes), output, model, map_options=grid, **run)
    echo_skipped(result.skipped)
    if not run["quiet"]:
        click.echo(
            f"wrote {result.output} from {result.extras['scenes']} scenes ({result.pixels / 1e6:.2f} MP in "
            f"{result.seconds:.1f} s, planned in {result.extras['planning_seconds']:.2f} s)",
            err=True,
        )
