"""A connected Dask client: an embedded LocalCluster, or an existing scheduler (TCP or TLS)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import dask
from distributed import Client as Client  # the runner and the API name the type from here
from distributed import LocalCluster
from distributed.security import Security

from mountproc._cluster import warm
from mountproc._cluster.checks import check_versions
from mountproc._cluster.members import wait_for_members
from mountproc._errors import ClusterError
from mountproc._mounts.table import note_stuck

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 15
CLOSE_TIMEOUT_S = 20


@dataclass(frozen=True)
class TlsFiles:
    """The CA, certificate and key this process presents on a ``tls://`` cluster."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Security:
        """distributed's ``Security``, encryption required, one certificate for every role."""
        return Security(
            tls_ca_file=self.ca_file,
            tls_client_cert=self.cert,
            tls_client_key=self.key,
            tls_scheduler_cert=self.cert,
            tls_scheduler_key=self.key,
            tls_worker_cert=self.cert,
            tls_worker_key=self.key,
            require_encryption=True,
        )


@dataclass(frozen=True)
class ClusterOptions:
    """How to get a cluster: an address, or the size of an embedded one."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    tls: TlsFiles | None = None
    worker_wait_s: float = 60.0
    host: str | None = None  # where the embedded scheduler listens: other machines join there
    port: int = 0  # 0: any free port
    members: tuple[str, ...] = ()  # names of the workers (machines) that must join first
    resources: dict[str, float] | None = None  # what each embedded worker declares
    memory_limit: int | None = None  # bytes per embedded worker (None: Dask's share of RAM)


@contextmanager
def open_cluster(opts: ClusterOptions) -> Iterator[Client]:
    """Yield a connected client; close what this call started."""
    if opts.scheduler:
        with _connect(opts) as client:
            yield client
        return
    # for the cluster's whole life: a nanny restarting a worker reads this process's config
    pre_spawn = warm.pre_spawn(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    with (
        dask.config.set(
            {**NO_PROFILER, **_slower_monitors(), "distributed.nanny.pre-spawn-environ": pre_spawn}
        ),
        dask.config.set(_forked()),
        quiet(),
        _local_cluster(opts) as client,
    ):
        yield client


def _forked() -> dict[str, str]:
    """Dask's config for workers forked from the warm fork server (``warm``), where there is
    one and it started with the environment a nanny sets before it spawns a worker.

    distributed preloads its fork server the first time it is used by importing, in this
    process, every package it may send (numpy, pandas, lz4): a second or more of the driver's
    time for modules the driver never uses. The server ``warm_up`` started has its preload
    already, so distributed is told it is set; without that attribute (another distributed
    version) it imports them as before, slower but the same."""
    warm.warm_up()
    pre_spawn = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    wanted = {k: os.environ.get(k, str(v)) for k, v in pre_spawn.items() if v is not None}
    if not warm.started() or not warm.matches(wanted):
        return {}
    import distributed.utils

    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True
    return {"distributed.worker.multiprocessing-method": warm.METHOD}


def _environ_for_forked() -> dict[str, str] | None:
    """What a forked worker must set to have this process's environment, as a spawned worker
    inherits it (None when workers are spawned)."""
    if dask.config.get("distributed.worker.multiprocessing-method") != warm.METHOD:
        return None
    return warm.changed_environ()


QUIET_LOGGERS = (
    "distributed",
    "distributed.client",
    "distributed.gc",
    "tornado",
    "tornado.application",
)
"""The loggers an embedded cluster's own chatter goes to (mountproc reports task failures, lost
workers and stuck processes itself)."""


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the embedded cluster in this process, as ``silence_logs`` does in its workers.
    ``silence_logs`` alone quiets only a handler distributed adds to its own loggers, which it
    does not add when the application configured logging first."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _script_hint() -> str:
    """Why workers fail to start when a script calls ``mountproc.run`` at import time: each
    worker process imports the script again (Python's spawn and forkserver start methods)."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if script is None or getattr(main, "__package__", None) == "mountproc":
        return ""  # an interactive session or notebook, or the mountproc command itself
    return (
        f" (if {script} calls mountproc.run at its top level, put the call under "
        '`if __name__ == "__main__":`: every worker process imports the script again)'
    )


@contextmanager
def _local_cluster(opts: ClusterOptions) -> Iterator[Client]:
    n = opts.workers or os.cpu_count() or 1
    try:
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=opts.threads_per_worker,
            processes=True,
            host=opts.host,
            scheduler_port=opts.port,
            security=opts.tls.security() if opts.tls else None,
            protocol="tls://" if opts.tls else None,
            # a free port (never collide with another cluster), on this machine's address only
            dashboard_address=f"{opts.host or '127.0.0.1'}:0",
            silence_logs=logging.CRITICAL,  # mountproc reports task failures itself
            resources=opts.resources or None,
            memory_limit=opts.memory_limit or "auto",
            env=_environ_for_forked(),
        )
    except Exception as exc:
        raise ClusterError(f"cannot start a local Dask cluster: {exc}{_script_hint()}") from exc
    log.info("started a local Dask cluster: %d workers x %d threads", n, opts.threads_per_worker)
    if cluster.dashboard_link:
        log.info("Dask dashboard: %s", cluster.dashboard_link)
    try:
        with Client(cluster, security=opts.tls.security() if opts.tls else None) as client:
            if opts.members:
                log.info("scheduler for the other members at %s", cluster.scheduler_address)
                wait_for_members(client, opts.members, opts.worker_wait_s)
                check_versions(client)
            yield client
    finally:
        _close(cluster)


NO_PROFILER = {"distributed.worker.profile.enabled": False}
"""Dask's statistical profiler samples every thread's stack every 10 ms: mountproc never reads
it, it costs CPU, and on CPython 3.11 it can deadlock a worker whose code frees
``threading.local`` objects in reference cycles (gh-106883)."""
PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"

SLOWER_MONITORS = {
    "distributed.admin.tick.interval": ("20ms", "1s"),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
    "distributed.worker.memory.monitor-interval": ("100ms", "500ms"),
}
"""distributed's default and the embedded cluster's interval of what its processes do besides
the work: the event loop's check for blocking, the dashboard's system plots, the nannies' and
workers' memory checks. Each nanny reads its worker's memory ten times a second; on two cores,
2,000 JPEGs took 0.3 s less wall (median of 6 pairs) and the driver 0.4 of 1.6 CPU-seconds
less with these. A worker over its limit is still stopped within half a second."""


def _slower_monitors() -> dict[str, str]:
    """``SLOWER_MONITORS`` where the config has distributed's default (not the user's)."""
    return {
        k: ours for k, (default, ours) in SLOWER_MONITORS.items() if dask.config.get(k) == default
    }


def worker_environ() -> dict[str, str]:
    """What a ``dask worker`` process mountproc starts outside the embedded cluster (a worker
    machine, a member, a batch job) sets unless its environment says otherwise: no profiler
    (``NO_PROFILER``), glibc's thresholds (``warm.MALLOC``; the nanny's own setting gives way
    to the environment's)."""
    return {PROFILER_ENV: "False", **warm.MALLOC}


def worker_command(
    address: str,
    nworkers: int,
    nthreads: int,
    name: str | None = None,
    tls: TlsFiles | None = None,
    host: str | None = None,
    death_timeout: float | None = None,
) -> list[str]:
    """The ``dask worker`` command line of a mountproc worker machine."""
    cmd = [sys.executable, "-m", "dask", "worker", address]
    cmd += ["--nworkers", str(nworkers), "--nthreads", str(nthreads), "--no-dashboard"]
    if name:
        cmd += ["--name", name]
    if host:
        cmd += ["--host", host]
    if death_timeout:
        cmd += ["--death-timeout", f"{death_timeout:g}"]
    if tls:
        cmd += ["--tls-ca-file", tls.ca_file, "--tls-cert", tls.cert, "--tls-key", tls.key]
    return cmd


def _close(cluster: LocalCluster) -> None:
    """Close the local cluster, but not forever: a worker blocked in the kernel on a hung mount
    (a FUSE request its daemon will never answer) cannot be killed until the mount answers."""
    try:
        cluster.close(timeout=CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError) as exc:
        note_stuck(f"a local Dask worker ({exc or type(exc).__name__})")
        log.warning(
            "a local Dask worker did not stop within %d s (a process blocked on a hung mount "
            "cannot be killed until the mount answers); leaving it behind",
            CLOSE_TIMEOUT_S,
        )


@contextmanager
def _connect(opts: ClusterOptions) -> Iterator[Client]:
    address = opts.scheduler
    assert address is not None
    security = opts.tls.security() if opts.tls else None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, security=security)
    except (OSError, TimeoutError) as exc:
        hint = (
            "; check that --tls-ca-file is the CA that signed the scheduler's certificate"
            if opts.tls
            else ""
        )
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: {exc}{hint}; check the address and "
            "that the scheduler runs, or omit --scheduler to start a local cluster"
        ) from None
    with client:
        _wait_for_workers(client, address, 1, opts.worker_wait_s)
        log.info("connected to the Dask scheduler at %s", address)
        if client.dashboard_link:
            log.info("Dask dashboard: %s", client.dashboard_link)
        check_versions(client)
        yield client


def _wait_for_workers(client: Client, address: str, n: int, timeout: float) -> None:
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        raise ClusterError(
            f"no worker joined the scheduler at {address} within {timeout:g} s: start workers "
            f"with `mountproc worker {address}` (or `dask worker {address}`), or wait longer "
            "with --worker-wait"
        ) from None
