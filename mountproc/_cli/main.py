"""The ``mountproc`` command group: logging set-up and ``--version``; the commands are in the
modules beside this one."""

from __future__ import annotations

import logging
import os
import sys

import click

from mountproc import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mountproc")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Batch preprocessing of huge datasets on network file systems, on Dask, for Valohai.

    \b
    Examples:
      mountproc sample-data ./photos && mountproc run jobs/resize_images.py --source ./photos
      mountproc run jobs/resize_images.py --test-mode
      mountproc plan jobs/resize_images.py --source /mnt/raw-images
      mountproc verify ./outputs
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    worker = click.get_current_context().invoked_subcommand == "worker"  # dask worker's own log
    if verbose < 2 and not worker:
        # distributed sets its loggers' levels from Dask's config when it is first imported,
        # which is after this (only a command that needs a cluster imports it)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)
