"""``geoseg predict``: a scene in, a Cloud-Optimized class raster out."""

from __future__ import annotations

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
from geoseg.options import VECTOR_FORMAT_HELP


@click.command("predict")
@click.argument("scene", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    help="Class raster (COG) to write: a path or s3://bucket/key.tif; with --cells, a folder or s3://bucket/prefix/.",
)
@click.option(
    "--model",
    "model",
    default=None,
    metavar="NAME_OR_PATH",
    help="Model file or built-in name (default: the built-in model).",
)
@predict_options
@workers_option(
    "Local Dask worker processes, 2 threads each (default: one worker in this process; see README)."
)
@scheduler_option
@click.option(
    "--probabilities",
    default=None,
    help="Also write per-class probabilities (uint8 0-255) to this COG (path or s3:// URL; with --cells: any value, the cells go into the folder).",
)
@click.option(
    "--confidence",
    default=None,
    help="Also write the winning class's probability (one uint8 band, 1-255, 0 = nodata) to this COG (path or s3:// URL; with --cells: any value).",
)
@click.option(
    "--vector",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Also write polygons of the classes ({VECTOR_FORMAT_HELP}); the options below shape them.",
)
@vector_options
@click.option(
    "--quicklook",
    is_flag=True,
    help="Also write a PNG of the classes with a legend of class names and areas: OUTPUT.png beside the COG, or quicklook.png in a --cells folder (not for s3:// outputs).",
)
@overwrite_option
@quiet_option
@verbose_option
@report_errors
def predict_command(
    scene: tuple[str, ...],
    output: str,
    model: str | None,
    workers: int | None,
    scheduler: str | None,
    probabilities: str | None,
    confidence: str | None,
    vector: str | None,
    quicklook: bool,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Segment SCENE into a georeferenced class raster (Cloud-Optimized GeoTIFF).

    SCENE is one raster, one file per band (B02.tif B03.tif ...), or a STAC item (.json).
    """
    from geoseg.prediction import predict

    predict_opts = take_predict_options(options)
    vector_opts = take_vector_options(options)
    result = predict(
        scene[0] if len(scene) == 1 else list(scene),
        output,
        model,
        predict_opts,
        workers=workers,
        scheduler=scheduler,
        probabilities=probabilities,
        confidence=confidence,
        overwrite=overwrite,
        quiet=quiet,
        vector=vector,
        vector_options=vector_opts,
        verbose=verbose,
        quicklook=quicklook,
    )
    for window in result.skipped:
        click.echo(
            f"skipped window rows {window.row_off}-{window.row_off + window.height}, columns "
            f"{window.col_off}-{window.col_off + window.width} (nodata written)",
            err=True,
        )
    if not quiet:
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
