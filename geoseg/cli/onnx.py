"""``geoseg export`` and ``geoseg import``: geoseg models to and from ONNX files."""

from __future__ import annotations

import click

from geoseg.cli.options import output_option, overwrite_option, report_errors


def _floats(text: str, hint: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of numbers", param_hint=hint
        ) from None
    if not values:
        raise click.BadParameter("give one number per input band", param_hint=hint)
    return values


@click.command("export")
@click.argument("model")
@output_option("ONNX file to write.")
@overwrite_option
@report_errors
def export_command(model: str, output: str, overwrite: bool) -> None:
    """Write MODEL (built-in name or file) as an ONNX file with its geoseg metadata."""
    from geoseg.models.onnx import export_model

    click.echo(f"wrote {export_model(model, output, overwrite)}", err=True)


@click.command("import")
@click.argument("source", type=click.Path(dir_okay=False))
@output_option("geoseg ONNX model to write.")
@click.option(
    "--classes",
    required=True,
    metavar="VALUE=NAME[:#RRGGBB],...",
    help="One class per output channel, in order, e.g. 1=water,2=forest,3=urban.",
)
@click.option(
    "--mean",
    required=True,
    metavar="m1,m2,...",
    help="Per-band mean the model was trained with (x - mean) / std.",
)
@click.option("--std", required=True, metavar="s1,s2,...", help="Per-band standard deviation.")
@click.option(
    "--bands", default=None, metavar="B02,B03,...", help="Band names, in the model's input order."
)
@overwrite_option
@report_errors
def import_command(
    source: str, output: str, classes: str, mean: str, std: str, bands: str | None, overwrite: bool
) -> None:
    """Turn SOURCE, an ONNX segmentation model made elsewhere (N x C x H x W float in, N x K x H x W
    logits out), into a geoseg model; its output stride and receptive field are measured."""
    from geoseg.models.onnx import import_model

    names = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
    model = import_model(
        source, output, classes, _floats(mean, "--mean"), _floats(std, "--std"), names, overwrite
    )
    click.echo(
        f"wrote {output}: {model.config.in_channels} bands, {len(model.classes)} classes, output stride "
        f"{model.output_stride}, receptive-field radius {model.receptive_field} px",
        err=True,
    )
