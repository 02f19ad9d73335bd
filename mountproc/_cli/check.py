"""``mountproc check``: the settings and the mount checks, on this machine and, with
``--scheduler`` or ``--cluster``, on every worker; nothing runs."""

from __future__ import annotations

import time
from typing import Any

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main
from mountproc._cli.options import EXTRA, JobCommand, load, run_options
from mountproc._mounts.dirs import human_bytes
from mountproc._mounts.preflight import Preflight, preflight
from mountproc._outputs.layout import RunPaths
from mountproc._resolve import ResolvedRun


@main.command(cls=JobCommand, context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@run_options
@click.pass_context
def check(ctx: click.Context, /, job_file: str, **values: Any) -> None:
    """Check JOB_FILE's settings and mounts without running anything.

    \b
    Example:
      mountproc check jobs/resize_images.py --source /mnt/raw-images --strict-mounts
    """

    def action() -> None:
        _, job, resolved = load(job_file, ctx, values)
        started = time.monotonic()
        checked = preflight(resolved, job.readonly)
        _print_check(checked, time.monotonic() - started)
        s = resolved.settings
        if s.scheduler or s.cluster:
            from mountproc._cluster.connect import check_cluster  # Dask only when needed

            token = RunPaths(resolved.outputs, resolved.scratch, job.name).token
            workers = check_cluster(resolved, token, checked.mount)
            where = s.scheduler or f"{s.cluster} worker jobs (cancelled again)"
            click.echo(f"workers: {workers} checked at {where}, all alike")
        _print_settings(resolved)
        click.echo("preflight ok")

    guarded(action)


def _print_check(checked: Preflight, seconds: float) -> None:
    m = checked.mount
    where = f"{m.fstype} {m.source}, {m.kind}" + (f", {m.service}" if m.service else "")
    rows = [
        ("source", str(m.path)),
        ("  mount", f"{m.mount_point} ({where})"),
        ("  mount point", "yes" if m.is_mount_point else "no (a directory inside the mount)"),
        ("  read-only", "yes" if m.readonly else "no"),
        ("  options", ",".join(m.options)),
        ("  answered in", f"{seconds:.3f} s"),
    ]
    for d in checked.dirs:
        rows.append((d.role, f"{d.path} ({d.fstype} on {d.mount_point})"))
        rows.append(("  free", f"{human_bytes(d.free_bytes)} (writable)"))
    for key, value in rows:
        click.echo(f"{key:<16} {value}")


def _print_settings(resolved: ResolvedRun) -> None:
    click.echo("settings:")
    for key, value in resolved.settings.model_dump(mode="json").items():
        click.echo(f"{'  --' + key.replace('_', '-'):<22} = {value}")
    click.echo("job parameters:")
    for key, value in resolved.params.model_dump(mode="json").items():
        click.echo(f"{'  --' + key:<22} = {value}")
