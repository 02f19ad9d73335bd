"""The ``mountproc`` command group: logging set-up and ``--version``; the commands are in the
modules beside this one."""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import os
import sys

import click

from mountproc import __version__

COMMANDS = {
    "check": ("check", "Check a job's settings and mounts, running nothing."),
    "plan": ("plan", "List and shard a job's source; estimate the run."),
    "report": ("report", "Why files failed, from a run's manifest."),
    "run": ("run", "Run a job over its source into tars in outputs."),
    "sample-data": ("sample_data", "Write a small tree of real sample images."),
    "try": ("try_files", "Run a job on a few files here, publishing nothing."),
    "verify": ("verify", "Check a run's tars against its metadata and manifest."),
    "worker": ("worker", "Run Dask workers that join a run's scheduler."),
    "yaml": ("yaml_step", "Print a valohai.yaml step for a job."),
}
"""Each command's module beside this one (which adds the command to ``main`` when imported)
and its line in ``mountproc --help``, which lists the commands without importing them."""


ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"


def arrow_pool() -> None:
    """Have pyarrow allocate from jemalloc in a mountproc process, unless the user chose a pool.

    The driver streams the listing and the plan through Arrow a batch at a time. On mimalloc,
    Arrow's usual pool, the pages each batch freed stayed resident: sharding a 10,000,000-file
    listing peaked 86 MB above where it began while Arrow never held more than 17 MB, and
    ``mountproc plan`` took 160 MB on 100,000 files, 194 MB on 10,000,000. On jemalloc: 133 and
    152 MB, at the same speed. pyarrow reads the variable when it is imported, so it is set
    before any command runs; Linux only (pyarrow's Linux wheels have jemalloc)."""
    if sys.platform == "linux":
        os.environ.setdefault(ARROW_POOL, "jemalloc")


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for: ``mountproc
    run`` does not import what ``yaml``, ``check`` or ``verify`` need (click's recipe for
    lazily loaded subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        arrow_pool()  # before the command's module may import pyarrow
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"mountproc._cli.{COMMANDS[cmd_name][0]}")
        return super().get_command(ctx, cmd_name)

    def all_commands(self) -> dict[str, click.Command]:
        """Every command, each module imported."""
        for module, _ in COMMANDS.values():
            importlib.import_module(f"mountproc._cli.{module}")
        return dict(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, line) for name, (_, line) in sorted(COMMANDS.items())])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    # the collection at interpreter exit walks every object of Dask, pandas and pyarrow to
    # free them in a process about to end: 0.2 s of a one-file run. Frozen objects are left
    # to the exit; what was opened is closed by then, and atexit handlers still run
    atexit.register(gc.freeze)
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
