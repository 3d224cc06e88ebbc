"""``geoseg train``: a chips folder in, a geoseg model file out."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import (
    output_option,
    overwrite_option,
    quiet_option,
    report_errors,
    train_options,
)
from geoseg.options import TrainOptions, take_fields


@click.command("train")
@click.argument("chips_dir", type=click.Path(file_okay=False))
@output_option("Model file to write (best epoch).")
@train_options
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch.")
@overwrite_option
@quiet_option
@report_errors
def train_command(
    chips_dir: str, output: str, resume: bool, overwrite: bool, quiet: bool, **options: Any
) -> None:
    """Train a segmentation model on CHIPS_DIR (made by 'geoseg chip')."""
    from geoseg.training.train import train

    train_opts = TrainOptions(**take_fields(options, TrainOptions))
    result = train(chips_dir, output, train_opts, resume=resume, overwrite=overwrite, quiet=quiet)
    if result.best_scores is not None:
        click.echo(result.best_scores.table())
    if result.best_miou is None:
        click.echo(
            f"wrote {result.output} (last epoch {result.best_epoch}; no validation chips, so no score: "
            "chip with --val-fraction above 0 to measure one)"
        )
    else:
        click.echo(
            f"wrote {result.output} (best epoch {result.best_epoch}, val mIoU {result.best_miou:.4f})"
        )
