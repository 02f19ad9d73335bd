"""``mountproc verify``: every published tar re-read and checked against the metadata and the
manifest."""

from __future__ import annotations

from pathlib import Path

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main


@main.command()
@click.argument("outputs_dir", metavar="OUTPUTS_DIR")
def verify(outputs_dir: str) -> None:
    """Check every tar in OUTPUTS_DIR against valohai.metadata.jsonl and the manifest.

    Each tar is re-read once: its sha256, size, member count and member names must match what
    mountproc run recorded; a truncated, altered, missing or unlisted tar is named, exit 1.

    \b
    Example:
      mountproc verify ./outputs
    """
    from mountproc._outputs.verify import conclusion, kept_note, verify_outputs

    def action() -> None:
        verdicts = []
        for verdict in verify_outputs(Path(outputs_dir)):
            click.echo(verdict.line())
            verdicts.append(verdict)
        click.echo(conclusion(Path(outputs_dir), verdicts))
        note = kept_note(Path(outputs_dir))
        if note is not None:
            click.echo(note)

    guarded(action)
