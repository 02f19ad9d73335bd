"""The Dask side: an embedded LocalCluster or an existing scheduler, and a bounded stream of
tasks over it. The only module that imports ``distributed``."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from distributed import Client as Client  # re-exported for type hints in the runner
from distributed import LocalCluster, as_completed

from mountproc._errors import ClusterError, ScratchNotSharedError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WORKER_WAIT_S = 60
CONNECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class ClusterOptions:
    """How to get a cluster: an address, or the size of an embedded one."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1


@contextmanager
def open_cluster(opts: ClusterOptions) -> Iterator[Client]:
    """Yield a connected client; close what this call started."""
    if opts.scheduler:
        with _connect(opts.scheduler) as client:
            yield client
        return
    n = opts.workers or os.cpu_count() or 1
    try:
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=opts.threads_per_worker,
            processes=True,
            dashboard_address=":0",  # a free port: never collide with another cluster
            silence_logs=logging.CRITICAL,  # mountproc reports task failures itself
        )
    except Exception as exc:
        raise ClusterError(f"cannot start a local Dask cluster: {exc}") from exc
    log.info("started a local Dask cluster: %d workers x %d threads", n, opts.threads_per_worker)
    if cluster.dashboard_link:
        log.info("Dask dashboard: %s", cluster.dashboard_link)
    with cluster, Client(cluster) as client:
        yield client


@contextmanager
def _connect(address: str) -> Iterator[Client]:
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: {exc}; check the address and that "
            "the scheduler runs, or omit --scheduler to start a local cluster"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise ClusterError(
                f"no worker joined the scheduler at {address} within {WORKER_WAIT_S} s: "
                "start workers with `dask worker " + address + "`"
            ) from None
        log.info("connected to the Dask scheduler at %s", address)
        yield client


def map_unordered(
    client: Client,
    fn: Callable[[T], R],
    items: Iterable[T],
    key: Callable[[T], str],
    window: int,
    retries: int = 1,
) -> Iterator[tuple[T, R | BaseException]]:
    """Run ``fn`` on every item with at most ``window`` tasks in flight; yield each item with its
    result, or with the exception that ended it (a lost worker, an error in ``fn``)."""
    pending: dict[str, T] = {}
    source = iter(items)
    stream = as_completed()

    def submit_next() -> bool:
        item = next(source, None)
        if item is None:
            return False
        fut = client.submit(fn, item, key=key(item), pure=False, retries=retries)
        pending[str(fut.key)] = item
        stream.add(fut)
        return True

    for _ in range(window):
        if not submit_next():
            break
    for fut in stream:
        item = pending.pop(str(fut.key))
        outcome: Any
        try:
            outcome = fut.result()
        except Exception as exc:  # the task's own error, a lost worker, a cancellation
            outcome = exc
        fut.release()
        submit_next()
        yield item, outcome


def check_shared_dir(client: Client, directory: Path) -> None:
    """Fail unless every worker sees ``directory`` (a token file written here): workers write
    their tars to scratch and this process publishes them from there."""
    token = directory / f".mountproc-token-{uuid.uuid4().hex}"
    token.write_text("mountproc\n")
    try:
        seen = client.run(os.path.exists, str(token))
    finally:
        token.unlink(missing_ok=True)
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise ScratchNotSharedError(
            f"scratch directory {directory} is not visible to worker {blind[0]} "
            f"({len(blind)} of {len(seen)} workers): put --scratch on a file system shared by "
            "this machine and every worker (e.g. the same NFS export mounted at the same path)"
        )


def worker_count(client: Client) -> int:
    """How many workers the scheduler knows now."""
    return len(client.scheduler_info().get("workers", {}))
