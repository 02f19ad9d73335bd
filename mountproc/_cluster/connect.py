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
from mountproc._cluster.placement import cluster_options
from mountproc._cluster.stream import worker_count
from mountproc._mounts.source import MountReport
from mountproc._records import WorkerCheck
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)


def worker_check(run: ResolvedRun, token_path: Path, mount: MountReport) -> WorkerCheck:
    """What every worker must see as this process does; writes the scratch token."""
    token = uuid.uuid4().hex
    token_path.write_text(token)
    return WorkerCheck(
        str(run.source), mount.view(), str(token_path), token, run.settings.mount_timeout
    )


def connect(
    stack: ExitStack,
    run: ResolvedRun,
    token_path: Path,
    mount: MountReport,
    client: Client | None = None,
) -> tuple[Client, WorkerCheck]:
    """Start or reach the cluster (closed with ``stack``), or use the caller's ``client`` (left
    open), and check every worker's view."""
    if client is None:
        client = stack.enter_context(open_cluster(cluster_options(run)))
    else:
        log.info("using the given Dask client (%s)", getattr(client.scheduler, "address", client))
        check_versions(client)
    check = worker_check(run, token_path, mount)
    check_workers(client, check)
    return client, check


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
