"""Where a run's work goes: which cluster (embedded, existing, or a Valohai distributed task's
primary or member), where the tree is listed, and how a tar built on a worker's own disk comes
to this machine."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

from mountproc._cluster import client as _cluster
from mountproc._mounts.preflight import MountReport
from mountproc._mounts.table import DISK_FULL_ERRNOS, find_oserror, note_stuck
from mountproc._outputs.resume import RunPaths
from mountproc._records import ShardResult
from mountproc._settings import ResolvedRun

log = logging.getLogger(__name__)

MEMBER_CONNECT_S = 600.0
"""How long a member waits for the primary's scheduler: machines of one task start minutes
apart (provisioning, image pulls, pip installs), and the primary lists nothing before it."""
CRAWL_THREADS = 16
"""Threads that list a network file system from the driver: each READDIR or stat is a round
trip, which threads overlap."""


def cluster_options(run: ResolvedRun) -> _cluster.ClusterOptions:
    """Which cluster the settings ask for."""
    s = run.settings
    tls = None
    if s.tls_ca_file and s.tls_cert and s.tls_key:
        tls = _cluster.TlsFiles(str(s.tls_ca_file), str(s.tls_cert), str(s.tls_key))
    opts = _cluster.ClusterOptions(s.scheduler, s.workers, s.threads_per_worker, tls, s.worker_wait)
    task = run.distributed
    if task is None:
        return opts
    return replace(opts, host=task.primary_ip, port=s.scheduler_port, members=task.others)


def member_command(run: ResolvedRun) -> list[str]:
    """On a member of a Valohai distributed task other than the primary: the worker command
    that joins the primary's scheduler (it exits when the primary closes it). Nothing is
    written to this member's outputs."""
    task = run.distributed
    assert task is not None
    assert not task.is_primary
    s = run.settings
    opts = cluster_options(run)
    address = f"{'tls' if opts.tls else 'tcp'}://{task.primary_ip}:{s.scheduler_port}"
    log.info(
        "member %s of a distributed task: joining the primary member %s at %s as a worker",
        task.member_id,
        task.member_ids[0],
        address,
    )
    return _cluster.worker_command(
        address,
        s.workers or os.cpu_count() or 1,
        s.threads_per_worker,
        name=_cluster.member_worker_name(task.member_id),
        tls=opts.tls,
        host=task.own_ip,
        death_timeout=max(s.worker_wait, MEMBER_CONNECT_S),
    )


def crawl_on_cluster(run: ResolvedRun) -> bool:
    """List the tree on the cluster's workers: asked for, or (auto) on a cluster of several
    machines, whose NFS clients together issue more READDIRs at once than the driver's."""
    s = run.settings
    if s.crawl == "auto":
        return bool(s.scheduler or run.distributed)
    return s.crawl == "cluster"


@contextmanager
def lister(
    run: ResolvedRun, mount: MountReport, client: _cluster.Client | None
) -> Iterator[Executor | None]:
    """Where the crawl's directory tasks run: the cluster, threads, or (None) serially here."""
    if client is not None:
        log.info("listing the source on the cluster's workers")
        yield _cluster.executor(client)
        return
    threads = run.settings.crawl_threads or (1 if mount.kind == "local" else CRAWL_THREADS)
    if threads <= 1:  # on a local disk a serial crawl is fastest (the GIL, no round trips)
        yield None
        return
    log.info("listing the source with %d threads (a %s file system)", threads, mount.kind)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mountproc-list")
    try:
        yield pool
    except BaseException:  # a hung mount may hold a thread forever: abandon it
        pool.shutdown(wait=False, cancel_futures=True)
        listing = [t for t in threading.enumerate() if t.name.startswith("mountproc-list")]
        for thread in listing:  # idle ones end at once; a blocked one is left behind
            thread.join(timeout=1.0)
        if any(thread.is_alive() for thread in listing):
            note_stuck("a listing thread")
        raise
    pool.shutdown(wait=True)


def brought(
    client: _cluster.Client, paths: RunPaths, outcome: ShardResult | BaseException, worker: str
) -> ShardResult | BaseException:
    """The outcome with its tar in this machine's scratch: copied from the worker's own disk
    when it does not share scratch; a failed copy fails the shard."""
    if not isinstance(outcome, ShardResult) or outcome.scratch_shared:
        return outcome
    local = paths.shards / f"{outcome.tar_name}.{uuid.uuid4().hex[:8]}.copy.partial"
    try:
        sha, size = _cluster.fetch_file(client, worker, outcome.tar_path, local)
    except BaseException as exc:
        local.unlink(missing_ok=True)
        _cluster.forget_file(client, worker, outcome.tar_path)
        if not isinstance(exc, Exception) or find_oserror(exc, DISK_FULL_ERRNOS) is not None:
            raise  # Ctrl-C, or this machine's disk is full: every copy would fail alike
        return RuntimeError(f"its tar could not be copied from worker {worker}: {exc}")
    if (sha, size) != (outcome.sha256, outcome.tar_bytes):
        local.unlink(missing_ok=True)
        return RuntimeError(f"its tar copied from worker {worker} does not match its sha256")
    return replace(outcome, tar_path=str(local))
