"""``mountproc report``: a finished run's outputs, read back: failures by reason, files and bytes
by folder, skipped and excluded entries."""

from __future__ import annotations

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main


@main.command()
@click.argument("outputs_dir", metavar="OUTPUTS_DIR")
@click.option("--job", help="The job whose manifest to read, when OUTPUTS_DIR holds several.")
def report(outputs_dir: str, job: str | None) -> None:
    """Read the manifest in OUTPUTS_DIR: why files failed, and where.

    \b
    Example:
      mountproc report ./outputs
    """

    def action() -> None:
        from mountproc._outputs.report import report_lines  # pandas only when needed

        for line in report_lines(outputs_dir, job):
            click.echo(line)

    guarded(action)
