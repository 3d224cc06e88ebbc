"""``geoseg models``: registered architectures and built-in models with stride and receptive field."""

from __future__ import annotations

import click

from geoseg.cli.options import json_object, report_errors


@click.command("models")
@click.argument("arch", required=False)
@click.option(
    "--arch-args",
    default=None,
    metavar="JSON",
    help='Arguments for ARCH, e.g. \'{"backbone": "mobilenetv3"}\'.',
)
@click.option(
    "--in-channels",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Bands for measuring.",
)
@report_errors
def models_command(arch: str | None, arch_args: str | None, in_channels: int) -> None:
    """List architectures (output stride, measured receptive field) and built-in models.

    The built-in architectures at their default arguments are listed from measurements made
    once; with ARCH and --arch-args (or another --in-channels) that configuration is measured
    now: a few seconds for the VGG- and ResNet-based ones.
    ARCH may also be a model file (.pt or ONNX): then that model is described.
    """
    import os

    from geoseg.models import get_architecture, list_models
    from geoseg.models.config import builtin_model_names
    from geoseg.models.load import load_model
    from geoseg.models.measured import DEFAULTS, IN_CHANNELS, measure

    if arch and os.path.isfile(arch):
        click.echo(load_model(arch).summary())
        return
    kwargs = json_object(arch_args, "--arch-args")
    archs = [get_architecture(arch)] if arch else list_models()
    click.echo(f"{'architecture':<15}{'stride':>7}{'RF radius':>10}{'params':>9}  summary")
    for spec in archs:
        known = DEFAULTS.get(spec.name) if not kwargs and in_channels == IN_CHANNELS else None
        m = known or measure(spec.name, in_channels, **kwargs)
        rf = "global" if m.receptive_field is None else str(m.receptive_field)
        click.echo(f"{spec.name:<15}{m.stride:>7}{rf:>10}{m.params / 1e6:>8.2f}M  {spec.summary}")
        for w in m.warnings:
            click.echo(f"{'':<15}warning: {w}")
    if arch:
        return
    click.echo("\nbuilt-in models:")
    for name in builtin_model_names():
        click.echo(f"  {load_model(name).summary()}")
