"""``geoseg chip``: labeled images in, georeferenced training chips out."""

from __future__ import annotations

from typing import Any

import click

from geoseg.cli.options import (
    chip_options,
    cluster_options,
    output_option,
    report_errors,
)
from geoseg.options import ChipOptions, take_fields


@click.command("chip")
@click.argument("pairs", nargs=-1, required=True, metavar="IMAGE LABELS [IMAGE LABELS ...]")
@output_option("Chips folder (created, or grown if it exists).", kind="folder", name="out_dir")
@chip_options
@cluster_options("Local Dask workers, threads of this process (default: one, a thread per core).")
@report_errors
def chip_command(
    pairs: tuple[str, ...], out_dir: str, workers: int | None, scheduler: str | None, **options: Any
) -> None:
    """Cut IMAGE/LABELS pairs (label raster or vector file) into training chips."""
    from geoseg.training.chips import load_manifest, make_chips, manifest_classes

    if len(pairs) % 2:
        raise click.UsageError("give IMAGE LABELS pairs: an even number of paths")
    chip_opts = ChipOptions(**take_fields(options, ChipOptions))
    summary = make_chips(
        list(zip(pairs[::2], pairs[1::2])), out_dir, chip_opts, workers=workers, scheduler=scheduler
    )
    click.echo(summary.table(manifest_classes(load_manifest(out_dir))))
    click.echo(f"{summary.total_chips} chips in {out_dir}")
