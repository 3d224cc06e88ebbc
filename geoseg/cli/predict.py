"""``geoseg predict``: a scene in, a Cloud-Optimized class raster out."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import (
    echo_skipped,
    model_option,
    report_errors,
    scene_output_option,
    scene_run_options,
    take_scene_run_options,
)


@click.command("predict")
@click.argument("scene", nargs=-1, required=True)
@scene_output_option("to write")
@model_option
@scene_run_options(
    click.option(
        "--quicklook",
        is_flag=True,
        help="Also write a PNG of the classes with a legend of class names and areas: OUTPUT.png beside the COG, or quicklook.png in a --cells folder (not for s3:// outputs).",
    )
)
@report_errors
def predict_command(
    scene: tuple[str, ...], output: str, model: str | None, quicklook: bool, **options: Any
) -> None:
    """Segment SCENE into a georeferenced class raster (Cloud-Optimized GeoTIFF).

    SCENE is one raster, one file per band (B02.tif B03.tif ...), or a STAC item (.json).
    """
    from geoseg.prediction import predict

    run = take_scene_run_options(options)
    source = scene[0] if len(scene) == 1 else list(scene)
    result = predict(source, output, model, quicklook=quicklook, **run)
    echo_skipped(result.skipped)
    if not run["quiet"]:
        click.echo(
            f"wrote {result.output} ({result.pixels / 1e6:.2f} MP in {result.seconds:.1f} s, "
            f"{result.megapixels_per_second:.2f} MP/s)"
            + (f" and {result.probabilities}" if result.probabilities else "")
            + (f" and {result.confidence}" if result.confidence else "")
            + (
                f"; {result.cells_kept} cells kept from an earlier run" if result.cells_kept else ""
            ),
            err=True,
        )
