"""The machines of a Valohai distributed task as Dask workers: their names, and waiting for all."""

from __future__ import annotations

import logging
import time

from distributed import Client

from mountproc._errors import ClusterError

log = logging.getLogger(__name__)


def member_worker_name(member: str) -> str:
    """The worker name of a member machine (``dask worker --name``; with ``--nworkers`` N,
    distributed appends ``-0`` .. ``-N-1``)."""
    return f"vh-member-{member}"


def wait_for_members(client: Client, members: tuple[str, ...], timeout: float) -> None:
    """Wait until a worker of every member machine has joined."""
    deadline = time.monotonic() + timeout
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        names = [str(w.get("name")) for w in workers.values()]
        missing = [
            m
            for m in members
            if not any(n == (w := member_worker_name(m)) or n.startswith(w + "-") for n in names)
        ]
        if not missing:
            log.info("every member joined: %s", ", ".join(members))
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"member(s) {', '.join(missing)} of the distributed task did not join within "
                f"{timeout:g} s: see their logs (a member that failed its mount check exits "
                "early), or wait longer with --worker-wait"
            )
        time.sleep(0.2)
