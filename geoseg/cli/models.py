"""``geoseg models``: registered architectures and built-in models with stride and receptive field."""

from __future__ import annotations

import click

from geoseg.cli.options import report_errors


@click.command("models")
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True, help="Bands for measuring.")
@report_errors
def models_command(in_channels: int) -> None:
    """List architectures (output stride, measured receptive field) and built-in models."""
    from geoseg.models import create_model, list_models, output_stride
    from geoseg.models.checkpoint import builtin_model_names, load_model
    from geoseg.models.receptive_field import measure_receptive_field

    click.echo(f"{'architecture':<16}{'stride':>7}{'RF radius':>11}{'params':>11}  summary")
    for arch in list_models():
        net = create_model(arch.name, in_channels, 2)
        stride = output_stride(net)
        rf = measure_receptive_field(net, in_channels, stride)
        params = sum(p.numel() for p in net.parameters())
        click.echo(f"{arch.name:<16}{stride:>7}{rf:>11}{params / 1e6:>10.2f}M  {arch.summary}")
    click.echo("\nbuilt-in models:")
    for name in builtin_model_names():
        m = load_model(name)
        classes = ", ".join(c.name for c in m.classes)
        click.echo(
            f"  {name}: {m.config.arch}, bands {','.join(m.in_bands)}, stride {m.output_stride}, "
            f"RF radius {m.receptive_field}; classes {classes}"
        )
