"""Checks of every worker before work starts: the same package versions, and the same view of the
source mount and scratch."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from distributed import Client

from mountproc._errors import ClusterError, MountprocError
from mountproc._mounts.workers import check_worker
from mountproc._records import WorkerCheck

log = logging.getLogger(__name__)

MATCHING_PACKAGES = ("mountproc", "dask", "distributed", "cloudpickle", "msgpack")
"""Packages whose versions must be the same on the driver and every worker: shards, results
and the job travel between them pickled."""


def check_versions(client: Client) -> None:
    """Fail unless every worker has mountproc, and the same versions of it, of Python and of
    the packages that carry pickled work between machines, as this process."""
    versions: Any = client.get_versions(packages=["mountproc"])  # a dict: the client is sync
    mine = versions["client"]["packages"]
    for worker, info in sorted(versions["workers"].items()):
        theirs = (info or {}).get("packages", {})
        if not theirs.get("mountproc"):
            raise ClusterError(
                f"worker {worker} has no mountproc installed: install mountproc=="
                f"{mine['mountproc']} on every worker (the job file itself travels with the run)"
            )
        for package in ("python", *MATCHING_PACKAGES):
            ours, its = mine.get(package), theirs.get(package)
            if package == "python":  # pickles are compatible across patch releases
                ours, its = _minor(ours), _minor(its)
            if ours != its:
                raise ClusterError(
                    f"worker {worker} runs {package} {its}, this machine {ours}: install the "
                    "same versions on every machine of the cluster (e.g. the same image)"
                )


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else version


def _check_named(check: WorkerCheck, dask_worker: Any = None) -> bool:
    """Run on a worker by ``Client.run``, which passes the worker when asked for it; a worker
    is named by its address and its machine (a batch job's node)."""
    address = getattr(dask_worker, "address", None)
    host = socket.gethostname()
    return check_worker(check, f"{address} on {host}" if address else host)


def check_workers(client: Client, check: WorkerCheck) -> None:
    """Fail unless every worker sees the source mount as this process does, and has a scratch
    directory (workers that join later check themselves before their first shard)."""
    outcomes = client.run(_check_named, check, on_error="return")
    for worker in sorted(outcomes):
        outcome = outcomes[worker]
        if isinstance(outcome, MountprocError):
            raise outcome
        # the check cannot even be unpickled there: distributed wraps that error as text
        if isinstance(outcome, BaseException) and "No module named 'mountproc'" in str(outcome):
            raise ClusterError(
                f"worker {worker} cannot import mountproc: install mountproc on every worker "
                "(the same version as this machine; the job file itself travels with the run)"
            )
        if isinstance(outcome, BaseException):
            raise ClusterError(
                f"cannot check worker {worker}: {type(outcome).__name__}: {outcome}; "
                "check that it runs the same mountproc version as this machine"
            )
    own = sorted(worker for worker, shared in outcomes.items() if shared is False)
    log.info("%d worker(s) see the source as this machine does", len(outcomes))
    scratch = Path(check.token_path).parent
    if own:
        log.info(
            "%d worker(s) cannot see this machine's scratch (%s): scratch %s is node-local for "
            "%d of %d worker(s), which build their tars on their own disk, copied here over the "
            "Dask connection",
            len(own),
            ", ".join(own),
            scratch,
            len(own),
            len(outcomes),
        )
    elif outcomes:
        log.info("scratch %s is shared with every worker: tars are built in place", scratch)
