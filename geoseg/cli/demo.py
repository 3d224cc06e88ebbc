"""``geoseg demo``: the built-in model on the built-in sample scene."""

from __future__ import annotations

import click

from geoseg.cli.options import overwrite_option, quiet_option, report_errors


@click.command("demo")
@click.option(
    "-o", "--output-dir", default="demo-output", show_default=True, type=click.Path(file_okay=False)
)
@overwrite_option
@quiet_option
@report_errors
def demo_command(output_dir: str, overwrite: bool, quiet: bool) -> None:
    """Segment the sample Sentinel-2 scene with the built-in land-cover model."""
    from geoseg.sample import SAMPLE_SCENE, run_demo

    result = run_demo(output_dir, overwrite=overwrite, quiet=quiet)
    click.echo(
        f"class raster:  {result.output.resolve()}\n"
        f"probabilities: {result.probabilities.resolve()}\n"
        f"sample scene:  {SAMPLE_SCENE}\n"
        "Open both rasters in QGIS (Layer > Add Layer > Add Raster Layer): the class raster shows "
        "with its embedded colour table on top of the scene (bands 3,2,1 as RGB)."
    )
