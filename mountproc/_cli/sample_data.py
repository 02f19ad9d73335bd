"""``mountproc sample-data``: a small tree of real images to try a job on."""

from __future__ import annotations

from pathlib import Path

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main


@main.command("sample-data")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(1), default=48, show_default=True)
@click.option("--bad/--no-bad", default=False, help="Also write corrupt and truncated files.")
def sample_data(directory: Path, count: int, bad: bool) -> None:
    """Write a small tree of real sample images to DIRECTORY.

    \b
    Example:
      mountproc sample-data ./sample-photos
      mountproc run jobs/resize_images.py --source ./sample-photos
    """
    from mountproc._demo_data import make_demo_tree  # Pillow only when needed

    guarded(
        lambda: click.echo(
            f"wrote {len(make_demo_tree(directory, count=count, bad=bad))} files to {directory}"
        )
    )
