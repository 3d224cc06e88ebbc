"""``geoseg batch``: run a job file (many scenes, or a training recipe) resumably."""

from __future__ import annotations

import json

import click

from geoseg.cli.options import quiet_option, report_errors


@click.command("batch")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Redo scenes whose outputs are already complete.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write the JSON run report (default: OUTPUT_FOLDER/batch-report.json).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --report file that is not this job's report.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also print a line per scene (start, done, skip, FAIL) and the local Dask workers' own logs.",
)
@quiet_option
@report_errors
def batch_command(
    job: str,
    force: bool,
    report_path: str | None,
    as_json: bool,
    overwrite: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Segment every scene of JOB once (skipping finished ones), or run its recipe steps."""
    from geoseg.jobs.run import run_batch

    report = run_batch(
        job,
        force=force,
        report_path=report_path,
        echo=lambda s: click.echo(s, err=True),
        overwrite=overwrite,
        verbose=verbose,
        progress=not quiet,
    )
    if report.outcomes:
        click.echo(json.dumps(report.as_dict(), indent=1) if as_json else report.table())
    if report.count("failed"):
        raise click.ClickException(
            f"{report.count('failed')} of {len(report.outcomes)} scene(s) failed"
        )
