"""Where a run's work goes: which cluster the settings ask for (embedded, existing, batch jobs,
or a Valohai distributed task's primary), the worker command of the task's other members, and
whether the tree is listed on the cluster."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from mountproc._cluster.client import ClusterOptions, TlsFiles, worker_command
from mountproc._cluster.jobqueue import BatchOptions
from mountproc._cluster.members import member_worker_name
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)


def cluster_options(run: ResolvedRun, shards: int | None = None) -> ClusterOptions:
    """Which cluster the settings ask for; an embedded cluster of the default size starts no
    more workers than there are ``shards`` to run (a worker without a shard only costs)."""
    s = run.settings
    tls = None
    if s.tls_ca_file and s.tls_cert and s.tls_key:
        tls = TlsFiles(str(s.tls_ca_file), str(s.tls_cert), str(s.tls_key))
    opts = ClusterOptions(s.scheduler, s.workers, s.threads_per_worker, tls, s.worker_wait)
    memory = int(s.worker_memory) if s.worker_memory is not None else None
    opts = replace(opts, resources=s.resource_needs or None, memory_limit=memory)
    task = run.distributed
    if task is None:
        if s.workers is None and not s.scheduler and shards is not None:
            opts = replace(opts, workers=max(1, min(os.cpu_count() or 1, shards)))
        return opts
    return replace(opts, host=task.primary_ip, port=s.scheduler_port, members=task.others)


def batch_options(run: ResolvedRun) -> BatchOptions | None:
    """The batch jobs ``--cluster`` asks for (None: no cluster of batch jobs)."""
    s = run.settings
    if s.cluster is None:
        return None
    memory = int(s.worker_memory) if s.worker_memory is not None else None
    return BatchOptions(s.cluster, s.workers or 1, s.adapt_bounds, memory, s.worker_wait)


def crawl_on_cluster(run: ResolvedRun) -> bool:
    """List the tree on the cluster's workers: asked for, or (auto) on a cluster of several
    machines, whose NFS clients together issue more READDIRs at once than the driver's."""
    s = run.settings
    if s.crawl == "auto":
        return bool(s.scheduler or s.cluster or run.distributed)
    return s.crawl == "cluster"


MEMBER_CONNECT_S = 600.0
"""How long a member waits for the primary's scheduler: machines of one task start minutes
apart (provisioning, image pulls, pip installs), and the primary lists nothing before it."""


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
    return worker_command(
        address,
        s.workers or os.cpu_count() or 1,
        s.threads_per_worker,
        name=member_worker_name(task.member_id),
        tls=opts.tls,
        host=task.own_ip,
        death_timeout=max(s.worker_wait, MEMBER_CONNECT_S),
    )
