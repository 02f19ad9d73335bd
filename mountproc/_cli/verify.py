"""``mountproc verify``: every published tar re-read and checked against the metadata and the
manifest."""

from __future__ import annotations

from pathlib import Path

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main
from mountproc._errors import VerificationFailed


@main.command()
@click.argument("outputs_dir", metavar="OUTPUTS_DIR")
def verify(outputs_dir: str) -> None:
    """Check every tar in OUTPUTS_DIR against valohai.metadata.jsonl and the manifest.

    Each tar is re-read once: its sha256, size, member count and member names must match what
    mountproc run recorded; a truncated, altered, missing or unlisted tar is named, exit 1.
    A test-mode run's outputs (OUTPUTS_DIR/test-mode) are checked too.

    \b
    Example:
      mountproc verify ./outputs
    """
    from mountproc._outputs.layout import METADATA_NAME, TEST_MODE_DIR
    from mountproc._outputs.verify import conclusion, kept_note, verify_outputs

    def check(directory: Path) -> VerificationFailed | None:
        verdicts = []
        for verdict in verify_outputs(directory):
            click.echo(verdict.line())
            verdicts.append(verdict)
        try:
            click.echo(conclusion(directory, verdicts))
        except VerificationFailed as exc:
            return exc
        note = kept_note(directory)
        if note is not None:
            click.echo(note)
        return None

    def action() -> None:
        root = Path(outputs_dir)
        found = [d for d in (root, root / TEST_MODE_DIR) if (d / METADATA_NAME).is_file()]
        failed = [bad for bad in map(check, found or [root]) if bad is not None]
        if failed:
            raise failed[0] if len(failed) == 1 else VerificationFailed("; ".join(map(str, failed)))

    guarded(action)
