"""``geoseg predict``: a scene in, a Cloud-Optimized class raster out."""

from __future__ import annotations

import click

from geoseg.cli.options import (
    device_option, margin_type, overwrite_option, quiet_option, report_errors, scheduler_option,
    workers_option,
)
from geoseg.cli.vectorize import connectivity_option, min_area_option, simplify_option, skip_option


@click.command("predict")
@click.argument("scene")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Class raster (COG) to write.")
@click.option("--model", "model", default=None, metavar="NAME_OR_PATH", help="Model file or built-in name (default: the built-in model).")
@click.option("--tile", type=click.IntRange(min=1), default=512, show_default=True, help="Network input size in pixels, margins included.")
@click.option("--margin", default="auto", show_default=True, help="Context pixels on each side of a tile's core; auto = receptive field.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per forward pass.")
@workers_option
@scheduler_option
@device_option
@click.option("--bands", default=None, metavar="1,2,3", help="Scene bands that feed the model, in order (1-based).")
@click.option("--probabilities", type=click.Path(dir_okay=False), default=None, help="Also write per-class probabilities (uint8 0-255) to this COG.")
@click.option("--vector", type=click.Path(dir_okay=False), default=None, help="Also write polygons of the classes (.gpkg .fgb .shp .geojson .parquet).")
@connectivity_option
@skip_option
@min_area_option
@simplify_option
@overwrite_option
@quiet_option
@report_errors
def predict_command(
    scene: str, output: str, model: str | None, tile: int, margin: str, batch_size: int,
    workers: int | None, scheduler: str | None, device: str, bands: str | None,
    probabilities: str | None, vector: str | None, connectivity: str, skip_classes: tuple[int, ...],
    min_area: float, simplify: float | None, overwrite: bool, quiet: bool,
) -> None:
    """Segment SCENE into a georeferenced class raster (Cloud-Optimized GeoTIFF)."""
    from geoseg.graph import predict

    try:
        margin_value = margin_type(margin)
    except click.BadParameter as exc:
        raise click.BadParameter(str(exc), param_hint="--margin") from None
    result = predict(
        scene, output, model=model, tile=tile, margin=margin_value, batch_size=batch_size,
        workers=workers, scheduler=scheduler, device=device, bands=bands,
        probabilities=probabilities, overwrite=overwrite, quiet=quiet, vector=vector,
        vector_options=dict(connectivity=int(connectivity), skip_classes=skip_classes,
                            min_area=min_area, simplify=simplify),
    )
    if not quiet:
        click.echo(
            f"wrote {result.output} ({result.pixels / 1e6:.2f} MP in {result.seconds:.1f} s, "
            f"{result.megapixels_per_second:.2f} MP/s)"
            + (f" and {result.probabilities}" if result.probabilities else ""),
            err=True,
        )
