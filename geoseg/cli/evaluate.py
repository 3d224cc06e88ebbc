"""``geoseg evaluate``: scores of a class raster against a reference."""

from __future__ import annotations

import click

from geoseg.cli.options import overwrite_option, report_errors


@click.command("evaluate")
@click.argument("prediction", type=click.Path(dir_okay=False))
@click.argument("reference", type=click.Path(dir_okay=False))
@click.option(
    "--ignore-value", type=int, default=None, help="Reference value meaning 'not labelled'."
)
@click.option(
    "--resample", is_flag=True, help="Resample the reference onto the prediction grid (nearest)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the report as JSON.",
)
@overwrite_option
@report_errors
def evaluate_command(
    prediction: str,
    reference: str,
    ignore_value: int | None,
    resample: bool,
    json_path: str | None,
    overwrite: bool,
) -> None:
    """Confusion matrix, per-class IoU/precision/recall/F1, mIoU, accuracy and kappa."""
    from geoseg.training.evaluate import evaluate

    scores = evaluate(
        prediction,
        reference,
        ignore_value=ignore_value,
        resample=resample,
        json_path=json_path,
        overwrite=overwrite,
    )
    click.echo(scores.table())
