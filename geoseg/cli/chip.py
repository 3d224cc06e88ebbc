"""``geoseg chip``: labeled images in, georeferenced training chips out."""

from __future__ import annotations

import click

from geoseg.cli.options import report_errors, scheduler_option, workers_option


@click.command("chip")
@click.argument("pairs", nargs=-1, required=True, metavar="IMAGE LABELS [IMAGE LABELS ...]")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Chips folder (created, or grown if it exists).")
@click.option("--size", type=click.IntRange(min=8), default=None, help="Chip size in pixels (default: the largest of 256/128/64/32 that fits 24 chips in the labelled area; a grown folder keeps its size).")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Step between chips (default: --size).")
@click.option("--bands", default=None, metavar="1,2,3", help="Image bands to keep, in order (default: all).")
@click.option("--label-field", default=None, help="Attribute holding the class, for vector labels.")
@click.option("--value-map", default=None, metavar="NAME=VALUE,...", help="Map label-field values to class numbers.")
@click.option("--background", type=click.IntRange(0, 254), default=None, help="Class of pixels outside every polygon (vector labels); default: not labelled.")
@click.option("--label-nodata-is-class", is_flag=True, help="Read a label raster's nodata value as a class (some rasters flag background as nodata).")
@click.option("--classes", "class_names", default=None, metavar="VALUE=NAME[:#RRGGBB],...", help="Class names and colours, e.g. 1=farmland:#e6c84b,2=forest.")
@click.option("--ignore-value", type=click.IntRange(0, 255), default=None, help="Label value meaning 'not labelled' (default 255).")
@click.option("--min-labeled", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Least labelled fraction of a chip (0: any chip with a labelled pixel).")
@click.option("--max-nodata", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Most image-nodata fraction of a chip (nodata pixels are never learned from).")
@click.option("--val-fraction", type=click.FloatRange(0, 1), default=0.2, show_default=True, help="Share of split blocks for validation.")
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of split blocks for testing.")
@click.option("--split-block", type=click.IntRange(min=8), default=None, help="Split block size in pixels (default: the largest of 4, 3 or 2 x --size that gives 6 blocks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--stratify/--no-stratify", default=True, show_default=True, help="Draw validation and test blocks so that they hold every class (label rasters); --no-stratify draws them at random, as geoseg chip did before.")
@click.option("--oversample-rare", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Extra sampling weight of chips holding rare classes.")
@workers_option("Local Dask workers, threads of this process (default: one, a thread per core).")
@scheduler_option
@report_errors
def chip_command(pairs: tuple[str, ...], out_dir: str, size: int | None, stride: int | None, bands: str | None,
                 label_field: str | None, value_map: str | None, background: int | None,
                 label_nodata_is_class: bool, class_names: str | None,
                 ignore_value: int | None, min_labeled: float, max_nodata: float, val_fraction: float,
                 test_fraction: float, split_block: int | None, seed: int, stratify: bool, oversample_rare: float,
                 workers: int | None, scheduler: str | None) -> None:
    """Cut IMAGE/LABELS pairs (label raster or vector file) into training chips."""
    from geoseg.training.chips import load_manifest, make_chips, manifest_classes, parse_value_map
    from geoseg.classes import parse_class_names

    if len(pairs) % 2:
        raise click.UsageError("give IMAGE LABELS pairs: an even number of paths")
    summary = make_chips(
        list(zip(pairs[::2], pairs[1::2])), out_dir, size=size, stride=stride, bands=bands,
        label_field=label_field, value_map=parse_value_map(value_map), background=background,
        label_nodata_is_class=label_nodata_is_class,
        class_names=parse_class_names(class_names), ignore_value=ignore_value,
        min_labeled=min_labeled, max_nodata=max_nodata, val_fraction=val_fraction,
        test_fraction=test_fraction, split_block=split_block, seed=seed, stratify=stratify,
        oversample_rare=oversample_rare, workers=workers, scheduler=scheduler,
    )
    click.echo(summary.table(manifest_classes(load_manifest(out_dir))))
    click.echo(f"{summary.total_chips} chips in {out_dir}")
