"""``mountproc run``: a job over its source, through ``mountproc.run``, with progress and the
summary table."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main
from mountproc._cli.options import (
    EXTRA,
    JobCommand,
    cli_settings,
    job_params,
    names_a_cluster,
    run_options,
)
from mountproc._cli.progress import Progress, final_metrics, summary_table
from mountproc._errors import MountprocError, RunInterrupted


@main.command(cls=JobCommand, context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@run_options
@click.pass_context
def run(ctx: click.Context, /, job_file: str, **values: Any) -> None:
    """Run JOB_FILE over its source: shard, transform, tar into outputs.

    \b
    Examples:
      mountproc run jobs/resize_images.py --source ./photos
      mountproc run jobs/resize_images.py --test-mode
      mountproc run jobs/resize_images.py --size=128 --scheduler tcp://10.0.0.5:8786
    """

    def action() -> None:
        if not names_a_cluster(values, os.environ):
            from mountproc._cluster import warm

            warm.warm_up()  # the embedded cluster's workers import while the job and Dask load
        from mountproc._api import run as run_job  # not for --help
        from mountproc._jobfile import job_ref

        _, job = job_ref(job_file)
        params = job_params(job, values.get("param_pairs") or (), ctx.args)
        progress = Progress(live=sys.stdout.isatty())
        try:
            report = run_job(job, params=params, progress=progress, **cli_settings(values))
        except (MountprocError, RunInterrupted) as exc:  # a run that stopped: what it did
            progress.close()
            if exc.report is not None:
                _show(exc.report.summary, exc.report.outputs, progress.live)
            raise
        finally:
            progress.close()
        if report.summary.get("role") != "member":
            _show(report.summary, report.outputs, progress.live)

    guarded(action)


def _show(summary: dict[str, Any], outputs: Path, live: bool) -> None:
    if not live:  # the last metrics line, for Valohai's charts
        click.echo(final_metrics(summary))
    for line in summary_table(summary, outputs):
        click.echo(line)
