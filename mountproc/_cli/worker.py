"""``mountproc worker``: ``dask worker`` with mountproc's defaults, for the machines of an
existing cluster."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mountproc._cli.guard import become, guarded
from mountproc._cli.main import main
from mountproc._errors import SettingsError
from mountproc._setting_values import check_tls


@main.command()
@click.argument("scheduler")
@click.option(
    "--nworkers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes on this machine.",
)
@click.option(
    "--nthreads",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Threads per worker process.",
)
@click.option("--name", help="Worker name (with --nworkers N, -0 .. -N-1 is appended).")
@click.option("--host", help="Address the workers listen on (default: chosen by Dask).")
@click.option("--tls-ca-file", metavar="FILE", help="CA certificate of the tls:// cluster.")
@click.option("--tls-cert", metavar="FILE", help="This worker's certificate (PEM).")
@click.option("--tls-key", metavar="FILE", help="This worker's private key (PEM).")
@click.option("--death-timeout", type=float, help="Seconds to wait for the scheduler, then exit.")
def worker(
    scheduler: str,
    nworkers: int,
    nthreads: int,
    name: str | None,
    host: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    death_timeout: float | None,
) -> None:
    """Run Dask workers for mountproc runs that join SCHEDULER; exit when it closes.

    This is `dask worker` with mountproc's defaults (one thread per process: transforms are
    CPU-bound). The machine needs the source mounted read-only at the same path as the driver.

    \b
    Examples:
      mountproc worker tcp://10.0.0.5:8786 --nworkers 8
      mountproc worker tls://10.0.0.5:8786 --tls-ca-file ca.pem --tls-cert w.pem --tls-key w.key
    """

    def action() -> None:
        from mountproc._cluster.client import TlsFiles, worker_command, worker_environ

        ca, cert, key = (Path(p) if p else None for p in (tls_ca_file, tls_cert, tls_key))
        try:
            secure = check_tls(ca, cert, key, scheduler)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        tls = TlsFiles(str(tls_ca_file), str(tls_cert), str(tls_key)) if secure else None
        cmd = worker_command(scheduler, nworkers, nthreads, name, tls, host, death_timeout)
        become(cmd, {**worker_environ(), **os.environ})

    guarded(action)
