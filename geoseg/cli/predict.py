"""``geoseg predict``: a scene in, a Cloud-Optimized class raster out."""

from __future__ import annotations

import click

from geoseg.cli.options import (
    auto_or_int, device_option, overwrite_option, quiet_option, report_errors, scheduler_option,
    verbose_option, workers_option,
)
from geoseg.crf import CRFParams
from geoseg.cli.vectorize import connectivity_option, min_area_option, simplify_option, skip_option


@click.command("predict")
@click.argument("scene")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Class raster (COG) to write.")
@click.option("--model", "model", default=None, metavar="NAME_OR_PATH", help="Model file or built-in name (default: the built-in model).")
@click.option("--tile", default="auto", show_default=True, help="Network input size in pixels, margins included; auto = 512, or 4 x margin for wide receptive fields.")
@click.option("--margin", default="auto", show_default=True, help="Context pixels on each side of a tile's core; auto = receptive field.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per forward pass.")
@workers_option
@scheduler_option
@device_option
@click.option("--bands", default=None, metavar="1,2,3", help="Scene bands that feed the model, in order (1-based).")
@click.option("--probabilities", type=click.Path(dir_okay=False), default=None, help="Also write per-class probabilities (uint8 0-255) to this COG.")
@click.option("--tta", type=click.Choice(["none", "flip", "d4"]), default="none", show_default=True, help="Test-time augmentation: average logits over flips (d4: and rotations).")
@click.option("--scales", default="1", show_default=True, metavar="0.75,1,1.25", help="Average logits over these input scales.")
@click.option("--crf", is_flag=True, help="Refine with the dense CRF (DeepLab v1); margin grows by iterations x radius.")
@click.option("--crf-iterations", type=click.IntRange(min=1), default=CRFParams.iterations, show_default=True)
@click.option("--crf-radius", type=click.IntRange(min=1), default=CRFParams.radius, show_default=True, help="Kernel window radius (pixels).")
@click.option("--crf-theta-alpha", type=click.FloatRange(min=0, min_open=True), default=CRFParams.theta_alpha, show_default=True, help="Bilateral kernel: position scale (pixels).")
@click.option("--crf-theta-beta", type=click.FloatRange(min=0, min_open=True), default=CRFParams.theta_beta, show_default=True, help="Bilateral kernel: colour scale (normalized band units).")
@click.option("--crf-theta-gamma", type=click.FloatRange(min=0, min_open=True), default=CRFParams.theta_gamma, show_default=True, help="Gaussian kernel: position scale (pixels).")
@click.option("--crf-w-bilateral", type=click.FloatRange(min=0), default=CRFParams.w_bilateral, show_default=True)
@click.option("--crf-w-gaussian", type=click.FloatRange(min=0), default=CRFParams.w_gaussian, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Autocast precision of the forward pass (bf16/fp16 mainly for CUDA).")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format (faster convolutions on recent GPUs).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network on each worker (falls back to eager).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True, help="A tile that cannot be read or inferred: fail the run, or write nodata there and list it in OUTPUT.skipped.json.")
@click.option("--vector", type=click.Path(dir_okay=False), default=None, help="Also write polygons of the classes (.gpkg .fgb .shp .geojson .parquet).")
@connectivity_option
@skip_option
@min_area_option
@simplify_option
@overwrite_option
@quiet_option
@verbose_option
@report_errors
def predict_command(
    scene: str, output: str, model: str | None, tile: str, margin: str, batch_size: int,
    workers: int | None, scheduler: str | None, device: str, bands: str | None,
    probabilities: str | None, vector: str | None, connectivity: str, skip_classes: tuple[int, ...],
    min_area: float, simplify: float | None, overwrite: bool, quiet: bool, tta: str, scales: str,
    crf: bool, crf_iterations: int, crf_radius: int, crf_theta_alpha: float, crf_theta_beta: float,
    crf_theta_gamma: float, crf_w_bilateral: float, crf_w_gaussian: float, precision: str,
    channels_last: bool, compile_: bool, on_error: str, verbose: bool,
) -> None:
    """Segment SCENE into a georeferenced class raster (Cloud-Optimized GeoTIFF)."""
    from geoseg.predict import predict

    margin_value = auto_or_int(margin, 0, "--margin")
    tile_value = auto_or_int(tile, 1, "--tile")
    try:
        scale_list = [float(v) for v in scales.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{scales!r} is not a comma-separated list of numbers, e.g. 0.75,1,1.25",
                                 param_hint="--scales") from None
    crf_params = CRFParams(crf_iterations, crf_radius, crf_theta_alpha, crf_theta_beta, crf_theta_gamma,
                           crf_w_bilateral, crf_w_gaussian) if crf else None
    result = predict(
        scene, output, model=model, tile=tile_value, margin=margin_value, batch_size=batch_size,
        workers=workers, scheduler=scheduler, device=device, bands=bands,
        probabilities=probabilities, overwrite=overwrite, quiet=quiet, vector=vector,
        vector_options=dict(connectivity=int(connectivity), skip_classes=skip_classes,
                            min_area=min_area, simplify=simplify),
        tta=tta, scales=scale_list, crf=crf_params, precision=precision, channels_last=channels_last,
        compile=compile_, on_error=on_error, verbose=verbose,
    )
    for window in result.skipped:
        click.echo(f"skipped window rows {window.row_off}-{window.row_off + window.height}, columns "
                   f"{window.col_off}-{window.col_off + window.width} (nodata written)", err=True)
    if not quiet:
        click.echo(
            f"wrote {result.output} ({result.pixels / 1e6:.2f} MP in {result.seconds:.1f} s, "
            f"{result.megapixels_per_second:.2f} MP/s)"
            + (f" and {result.probabilities}" if result.probabilities else ""),
            err=True,
        )
