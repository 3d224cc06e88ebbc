"""``geoseg recipe``: run a job file of geoseg steps (the built-in model's recipe is one)."""

from __future__ import annotations

import click

from geoseg.cli.options import report_errors


@click.command("recipe")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a recipe variable.")
@report_errors
def recipe_command(job: str, sets: tuple[str, ...]) -> None:
    """Run the steps of JOB (YAML) in order."""
    from geoseg.recipe import parse_overrides, run_recipe

    run_recipe(job, parse_overrides(sets), echo=lambda s: click.echo(s, err=True))
