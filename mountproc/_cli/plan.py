"""``mountproc plan``: list and shard as a run would, time a few files, estimate the run."""

from __future__ import annotations

from typing import Any

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main
from mountproc._cli.options import EXTRA, JobCommand, load, run_options


@main.command(cls=JobCommand, context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@run_options
@click.pass_context
def plan(ctx: click.Context, /, job_file: str, **values: Any) -> None:
    """List and shard JOB_FILE's source, time a few of its files here, and estimate the run.

    Nothing is written to outputs or scratch: the listing lives in a temporary directory.

    \b
    Example:
      mountproc plan jobs/resize_images.py --source /mnt/raw-images --workers 16
    """

    def action() -> None:
        from mountproc._planning.estimate import plan_job
        from mountproc._planning.render import render

        ref, job, resolved = load(job_file, ctx, values)
        for line in render(plan_job(job, ref, resolved)):
            click.echo(line)

    guarded(action)
