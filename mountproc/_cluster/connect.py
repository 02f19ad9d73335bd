"""A run's cluster: started, reached, or handed in by the caller, and every worker checked
against this machine's view of the source and scratch before any work."""

from __future__ import annotations

import contextlib
import logging
import uuid
from contextlib import ExitStack
from pathlib import Path

from distributed import Client

from mountproc._cluster.checks import check_versions, check_workers
from mountproc._cluster.client import open_cluster
from mountproc._cluster.jobqueue import batch_cluster
from mountproc._cluster.placement import batch_options, cluster_options
from mountproc._cluster.stream import worker_count
from mountproc._errors import ClusterError
from mountproc._mounts.source import MountReport
from mountproc._records import WorkerCheck
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)


def worker_check(run: ResolvedRun, token_path: Path, mount: MountReport) -> WorkerCheck:
    """What every worker must see as this process does; writes the scratch token."""
    token = uuid.uuid4().hex
    token_path.write_text(token)
    return WorkerCheck(
        str(run.source),
        mount.view(),
        str(token_path),
        token,
        run.settings.mount_timeout,
        remote=run.on_demand is not None,
    )


def connect(
    stack: ExitStack,
    run: ResolvedRun,
    token_path: Path,
    mount: MountReport,
    client: Client | None = None,
    shards: int | None = None,
) -> tuple[Client, WorkerCheck]:
    """Start or reach the cluster (closed with ``stack``), or use the caller's ``client`` (left
    open), and check every worker's view; ``shards``: how many the run has left to run."""
    if client is None:
        batch = batch_options(run)
        opened = batch_cluster(batch) if batch else open_cluster(cluster_options(run, shards))
        client = stack.enter_context(opened)
    else:
        log.info("using the given Dask client (%s)", getattr(client.scheduler, "address", client))
        check_versions(client)
    check = worker_check(run, token_path, mount)
    check_workers(client, check)
    _check_resources(client, run.settings.resource_needs)
    return client, check


def _check_resources(client: Client, needs: dict[str, float]) -> None:
    """Fail unless some worker offers the resources every shard needs (else shards would wait
    for one forever)."""
    if not needs:
        return
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    offering = [
        address
        for address, info in workers.items()
        if all(info.get("resources", {}).get(k, 0) >= v for k, v in needs.items())
    ]
    wanted = ",".join(f"{k}={v:g}" for k, v in needs.items())
    if not offering:
        raise ClusterError(
            f"no worker offers --resources {wanted}: start workers with "
            f'`dask worker ADDRESS --resources "{wanted.replace(",", " ")}"`, or drop --resources'
        )
    log.info(
        "%d of %d worker(s) offer %s; shards run on those", len(offering), len(workers), wanted
    )


def check_cluster(run: ResolvedRun, token_path: Path, mount: MountReport) -> int:
    """Reach ``--scheduler`` and check every worker's view of the mounts; return how many
    workers were checked. Writes only the token file, removed again with the directories made
    for it."""
    root = token_path.parent
    made = [d for d in (root, *root.parents) if not d.exists()]
    root.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            client, _ = connect(stack, run, token_path, mount)
            return worker_count(client)
    finally:
        token_path.unlink(missing_ok=True)
        for directory in made:  # deepest first; a worker may have written there meanwhile
            with contextlib.suppress(OSError):
                directory.rmdir()
