"""``geoseg train``: a chips folder in, a geoseg model file out."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import device_option, json_object, overwrite_option, quiet_option, report_errors


@click.command("train")
@click.argument("chips_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write (best epoch).")
@click.option("--arch", default="unet-small", show_default=True, help="Architecture from 'geoseg models'.")
@click.option("--arch-args", default=None, metavar="JSON", help='Architecture arguments, e.g. \'{"depth": 4}\'.')
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Most epochs (default: about 1000 optimizer steps, 15 to 150 epochs).")
@click.option("--patience", type=click.IntRange(min=0), default=None, help="Stop after this many epochs without a better validation mIoU, once a third of the epochs ran (default: max(10, epochs/6); 0: never).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: 16 on the CPU, 32 on CUDA, less for small chip sets (at least 4 steps an epoch).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "poly"]), default="cosine", show_default=True)
@click.option("--class-weights", "class_weighting", type=click.Choice(["sqrt", "inverse", "none"]), default="sqrt", show_default=True)
@click.option("--dice-weight", type=click.FloatRange(min=0), default=None, help="Weight of the Dice term beside cross-entropy (default: 0.5 for two classes, 1 for more).")
@click.option("--ema", type=click.FloatRange(min=0), default=None, metavar="EPOCHS", help="Validate and keep a moving average of the weights with this half-life in epochs (default: 3; 0: the raw weights).")
@device_option
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True, help="auto: mixed precision on CUDA, fp32 on the CPU; bf16: bf16 autocast anywhere (CPUs with AMX / AVX-512 BF16).")
@click.option("--channels-last", is_flag=True, help="Channels-last memory layout (faster convolutions on recent CPUs and GPUs).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data-loading processes.")
@click.option("--pretrained", default=None, metavar="imagenet|PATH", help="Start the encoder from torchvision's ImageNet weights (downloaded once) or a local state dict (torchvision, torchgeo or timm layout); first convolution adapted to the bands by name.")
@click.option("--pretrained-bands", default=None, metavar="NAME,...", help="Band names of the --pretrained PATH weights' input, in order (ImageNet: red,green,blue).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch.")
@overwrite_option
@quiet_option
@report_errors
def train_command(chips_dir: str, output: str, arch: str, arch_args: str | None, epochs: int | None,
                  patience: int | None,
                  batch_size: int | None, lr: float, weight_decay: float, schedule: str,
                  class_weighting: str, dice_weight: float | None, ema: float | None, device: str, precision: str,
                  channels_last: bool, seed: int, workers: int,
                  pretrained: str | None, pretrained_bands: str | None, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Train a segmentation model on CHIPS_DIR (made by 'geoseg chip')."""
    from geoseg.training.train import train

    kwargs = json_object(arch_args, "--arch-args")
    extra: dict[str, Any] = {} if ema is None else {"ema": ema}  # None: the library's default
    result = train(chips_dir, output, arch=arch, arch_kwargs=kwargs, epochs=epochs, patience=patience,
                   batch_size=batch_size,
                   lr=lr, weight_decay=weight_decay, schedule=schedule, class_weighting=class_weighting,
                   dice_weight=dice_weight, device=device, precision=precision,
                   channels_last=channels_last, seed=seed, workers=workers, resume=resume,
                   overwrite=overwrite, quiet=quiet, pretrained=pretrained,
                   pretrained_bands=[b.strip() for b in pretrained_bands.split(",")] if pretrained_bands else None,
                   **extra)
    if result.best_scores is not None:
        click.echo(result.best_scores.table())
    if result.best_miou is None:
        click.echo(f"wrote {result.output} (last epoch {result.best_epoch}; no validation chips, so no score: "
                   "chip with --val-fraction above 0 to measure one)")
    else:
        click.echo(f"wrote {result.output} (best epoch {result.best_epoch}, val mIoU {result.best_miou:.4f})")
