"""``geoseg models``: registered architectures and built-in models with stride and receptive field."""

from __future__ import annotations

import warnings

import click

from typing import TYPE_CHECKING

from geoseg.cli.options import json_object, report_errors

if TYPE_CHECKING:
    from geoseg.models.checkpoint import LoadedModel


@click.command("models")
@click.argument("arch", required=False)
@click.option("--arch-args", default=None, metavar="JSON", help='Arguments for ARCH, e.g. \'{"backbone": "mobilenetv3"}\'.')
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True, help="Bands for measuring.")
@report_errors
def models_command(arch: str | None, arch_args: str | None, in_channels: int) -> None:
    """List architectures (output stride, measured receptive field) and built-in models.

    With ARCH (and --arch-args), measure that one configuration. Measuring runs the network
    on a strip of random input, a few seconds for the VGG- and ResNet-based ones. ARCH may also
    be a model file (.pt or ONNX): then that model is described.
    """
    import os
    from geoseg.models import create_model, get_architecture, list_models, output_stride
    from geoseg.models.checkpoint import builtin_model_names, load_model
    from geoseg.models.receptive_field import NonLocalError, measure_receptive_field

    if arch and os.path.isfile(arch):
        click.echo(describe(load_model(arch)))
        return
    kwargs = json_object(arch_args, "--arch-args")
    archs = [get_architecture(arch)] if arch else list_models()
    click.echo(f"{'architecture':<15}{'stride':>7}{'RF radius':>10}{'params':>9}  summary")
    for spec in archs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = create_model(spec.name, in_channels, 2, **kwargs)
        stride = output_stride(net)
        try:
            rf = str(measure_receptive_field(net, in_channels, stride))
        except NonLocalError:
            rf = "global"
        params = sum(p.numel() for p in net.parameters())
        click.echo(f"{spec.name:<15}{stride:>7}{rf:>10}{params / 1e6:>8.2f}M  {spec.summary}")
        for w in caught:
            click.echo(f"{'':<15}warning: {w.message}")
    if arch:
        return
    click.echo("\nbuilt-in models:")
    for name in builtin_model_names():
        click.echo(f"  {describe(load_model(name))}")


def describe(m: "LoadedModel") -> str:
    """One line about a loaded model: format, architecture, bands, stride, receptive field, classes."""
    classes = ", ".join(c.name for c in m.classes)
    return (f"{m.name}: {m.format} model, {m.config.arch}, bands {','.join(m.in_bands)}, stride "
            f"{m.output_stride}, RF radius {m.receptive_field}; classes {classes}")
