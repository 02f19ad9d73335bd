"""The Dask side: an embedded LocalCluster or an existing scheduler, and a bounded stream of
tasks over it. The only module that imports ``distributed``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from distributed import Client as Client  # re-exported for type hints in the runner
from distributed import LocalCluster, as_completed

from mountproc._errors import ClusterError, MountprocError
from mountproc._preflight import check_worker
from mountproc._records import WorkerCheck

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WORKER_WAIT_S = 60
CONNECT_TIMEOUT_S = 15
CLOSE_TIMEOUT_S = 20


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
    try:
        with Client(cluster) as client:
            yield client
    finally:
        _close(cluster)


_STUCK: list[str] = []


def _close(cluster: LocalCluster) -> None:
    """Close the local cluster, but not forever: a worker blocked in the kernel on a hung mount
    (a FUSE request its daemon will never answer) cannot be killed until the mount answers."""
    try:
        cluster.close(timeout=CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError) as exc:
        _STUCK.append(str(exc) or type(exc).__name__)
        log.warning(
            "a local Dask worker did not stop within %d s (a process blocked on a hung mount "
            "cannot be killed until the mount answers); leaving it behind",
            CLOSE_TIMEOUT_S,
        )


def left_stuck_processes() -> bool:
    """True if a cluster of this process could not be stopped: exit with ``os._exit`` then,
    since interpreter shutdown would wait for its processes forever."""
    return bool(_STUCK)


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


class TaskStream(Generic[T, R]):
    """Runs ``fn`` on every item with at most ``window`` tasks in flight; iterating yields each
    item with its result, or with the exception that ended it (a lost worker, an error in
    ``fn``, a cancellation)."""

    def __init__(
        self,
        client: Client,
        fn: Callable[[T], R],
        items: Iterable[T],
        key: Callable[[T], str],
        window: int,
        retries: int = 1,
    ) -> None:
        self._client, self._fn, self._key, self._retries = client, fn, key, retries
        self._items = iter(items)
        self._window = window
        self._pending: dict[str, tuple[T, Any]] = {}
        self._stream = as_completed()
        self._lock = threading.Lock()
        self._cancelled = False

    def _submit_next(self) -> None:
        with self._lock:
            item = None if self._cancelled else next(self._items, None)
            if item is None:
                return
            fut = self._client.submit(
                self._fn, item, key=self._key(item), pure=False, retries=self._retries
            )
            self._pending[str(fut.key)] = (item, fut)
        self._stream.add(fut)

    def __iter__(self) -> Iterator[tuple[T, R | BaseException]]:
        for _ in range(self._window):
            self._submit_next()
        for fut in self._stream:
            with self._lock:
                item, _ = self._pending.pop(str(fut.key))
            outcome: Any
            try:
                outcome = fut.result()
            except Exception as exc:  # the task's own error, a lost worker, a cancellation
                outcome = exc
            fut.release()
            self._submit_next()
            yield item, outcome

    def cancel(self) -> None:
        """Submit nothing more and cancel the tasks in flight (callable from any thread)."""
        with self._lock:
            self._cancelled = True
            futures = [fut for _, fut in self._pending.values()]
        if futures:
            self._client.cancel(futures)


def _check_named(check: WorkerCheck, dask_worker: Any = None) -> None:
    """Run on a worker by ``Client.run``, which passes the worker when asked for it."""
    name = getattr(dask_worker, "address", None) or socket.gethostname()
    check_worker(check, name)


def check_workers(client: Client, check: WorkerCheck) -> None:
    """Fail unless every worker sees the source mount and the scratch directory as this
    process does (workers that join later check themselves before their first shard)."""
    outcomes = client.run(_check_named, check, on_error="return")
    for worker in sorted(outcomes):
        outcome = outcomes[worker]
        if isinstance(outcome, MountprocError):
            raise outcome
        if isinstance(outcome, BaseException):
            raise ClusterError(
                f"cannot check worker {worker}: {type(outcome).__name__}: {outcome}; "
                "check that it runs the same mountproc version as this machine"
            )
    log.info("%d worker(s) see the source and scratch as this machine does", len(outcomes))


def worker_count(client: Client) -> int:
    """How many workers the scheduler knows now."""
    return len(client.scheduler_info().get("workers", {}))
