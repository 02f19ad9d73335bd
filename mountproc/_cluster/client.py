"""The Dask side: an embedded LocalCluster or an existing scheduler, and a bounded stream of
tasks over it. The only module that imports ``distributed``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import dask
from distributed import Client as Client  # re-exported for type hints in the runner
from distributed import LocalCluster, as_completed, get_worker
from distributed.security import Security

from mountproc._errors import ClusterError, MountprocError, WorkersLostError
from mountproc._mounts.preflight import check_worker
from mountproc._mounts.table import note_stuck
from mountproc._records import WorkerCheck
from mountproc._shard.tar import read_chunk, remove_file

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 15
FETCH_CHUNK_BYTES = 16 << 20
FETCH_TIMEOUT_S = 300
FETCH_POLL_S = 2.0  # how often a copy checks that its worker is still there
CLOSE_TIMEOUT_S = 20
MATCHING_PACKAGES = ("mountproc", "dask", "distributed", "cloudpickle", "msgpack")
"""Packages whose versions must be the same on the driver and every worker: shards, results
and the job travel between them pickled."""


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


@contextmanager
def open_cluster(opts: ClusterOptions) -> Iterator[Client]:
    """Yield a connected client; close what this call started."""
    if opts.scheduler:
        with _connect(opts) as client:
            yield client
        return
    # for the cluster's whole life: a nanny restarting a worker reads this process's config
    with dask.config.set(NO_PROFILER), _local_cluster(opts) as client:
        yield client


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
        )
    except Exception as exc:
        raise ClusterError(f"cannot start a local Dask cluster: {exc}") from exc
    log.info("started a local Dask cluster: %d workers x %d threads", n, opts.threads_per_worker)
    if cluster.dashboard_link:
        log.info("Dask dashboard: %s", cluster.dashboard_link)
    try:
        with Client(cluster, security=opts.tls.security() if opts.tls else None) as client:
            if opts.members:
                log.info("scheduler for the other members at %s", cluster.scheduler_address)
                _wait_for_members(client, opts.members, opts.worker_wait_s)
                check_versions(client)
            yield client
    finally:
        _close(cluster)


def member_worker_name(member: str) -> str:
    """The worker name of a member machine (``dask worker --name``; with ``--nworkers`` N,
    distributed appends ``-0`` .. ``-N-1``)."""
    return f"vh-member-{member}"


def _wait_for_members(client: Client, members: tuple[str, ...], timeout: float) -> None:
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


NO_PROFILER = {"distributed.worker.profile.enabled": False}
"""Dask's statistical profiler samples every thread's stack every 10 ms: mountproc never reads
it, it costs CPU, and on CPython 3.11 it can deadlock a worker whose code frees
``threading.local`` objects in reference cycles (gh-106883)."""
PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


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


def _located(fn: Callable[[T], R], item: T) -> tuple[str, R]:
    """Run ``fn`` on a worker; return that worker's address with the result."""
    return get_worker().address, fn(item)


class TaskStream(Generic[T, R]):
    """Runs ``fn`` on every item with at most ``window`` tasks in flight; iterating yields each
    item with its result, or with the exception that ended it (a lost worker, an error in
    ``fn``, a cancellation), and the address of the worker that ran it ("" if unknown)."""

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
                _located, self._fn, item, key=self._key(item), pure=False, retries=self._retries
            )
            self._pending[str(fut.key)] = (item, fut)
        self._stream.add(fut)

    def __iter__(self) -> Iterator[tuple[T, R | BaseException, str]]:
        for _ in range(self._window):
            self._submit_next()
        for fut in self._stream:
            with self._lock:
                item, _ = self._pending.pop(str(fut.key))
            outcome: Any
            worker = ""
            try:
                worker, outcome = fut.result()
            except Exception as exc:  # the task's own error, a lost worker, a cancellation
                outcome = exc
            fut.release()
            self._submit_next()
            yield item, outcome, worker

    def cancel(self) -> None:
        """Submit nothing more and cancel the tasks in flight (callable from any thread)."""
        with self._lock:
            self._cancelled = True
            futures = [fut for _, fut in self._pending.values()]
        if futures:
            self._client.cancel(futures)


def _check_named(check: WorkerCheck, dask_worker: Any = None) -> bool:
    """Run on a worker by ``Client.run``, which passes the worker when asked for it."""
    name = getattr(dask_worker, "address", None) or socket.gethostname()
    return check_worker(check, name)


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
    if own:
        log.info(
            "%d worker(s) cannot see this machine's scratch (%s): their tars are copied over "
            "the Dask connection",
            len(own),
            ", ".join(own),
        )


def fetch_file(client: Client, worker: str, remote: str, local: Path) -> tuple[str, int]:
    """Copy the file ``remote`` from ``worker``'s disk to ``local`` in chunks, then delete it
    there; return the sha256 and size of what was copied."""
    sha, size = hashlib.sha256(), 0
    with local.open("xb") as out:
        while True:
            chunk = _on(client, worker, read_chunk, remote, size, FETCH_CHUNK_BYTES)
            if not chunk:
                break
            sha.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    _on(client, worker, remove_file, remote)
    return sha.hexdigest(), size


def _on(client: Client, worker: str, fn: Callable[..., R], *args: Any) -> R:
    """Run ``fn`` on that very worker (it holds the file); fail at once if it leaves."""
    fut = client.submit(fn, *args, workers=[worker], allow_other_workers=False, pure=False)
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    while True:
        try:
            result: R = fut.result(timeout=FETCH_POLL_S)
            return result
        except (TimeoutError, asyncio.TimeoutError):  # distinct types before Python 3.11
            pass
        gone = worker not in client.scheduler_info(n_workers=-1)["workers"]
        if gone or time.monotonic() > deadline:
            fut.cancel()
            why = "left the cluster" if gone else f"did not answer within {FETCH_TIMEOUT_S} s"
            raise ClusterError(f"worker {worker} {why} before handing over {args[0]}")


def forget_file(client: Client, worker: str, path: str) -> None:
    """Delete ``path`` on ``worker`` if it is still there to do it (best effort)."""
    with contextlib.suppress(Exception):
        if worker in client.scheduler_info(n_workers=-1)["workers"]:
            _on(client, worker, remove_file, path)


def executor(client: Client) -> Executor:
    """The cluster as a ``concurrent.futures.Executor`` for work whose results are not cached:
    each call reads a live file system, so no key needs hashing (``pure=False``)."""
    pool: Executor = client.get_executor(pure=False)
    return pool


def worker_count(client: Client) -> int:
    """How many workers the scheduler knows now."""
    return len(client.scheduler_info(n_workers=-1).get("workers", {}))


class WorkerWatch:
    """Notices a cluster left without any worker (killed, evicted, scaled to zero): tasks would
    wait for one forever. After ``grace_s`` without a worker it calls ``on_lost`` and
    ``check()`` raises ``WorkersLostError``."""

    POLL_S = 1.0

    def __init__(self, client: Client, grace_s: float, on_lost: Callable[[], None]) -> None:
        self._client, self._grace_s, self._on_lost = client, grace_s, on_lost
        self._stop = threading.Event()
        self._error: WorkersLostError | None = None
        self._thread = threading.Thread(target=self._run, name="mountproc-workers", daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise ``WorkersLostError`` once the cluster has been without workers too long."""
        if self._error is not None:
            raise self._error

    def _address(self) -> str:
        return str(getattr(self._client.scheduler, "address", None) or "the scheduler")

    def _run(self) -> None:
        since: float | None = None
        while not self._stop.wait(self.POLL_S):
            try:
                alive = worker_count(self._client) > 0
            except Exception:  # the scheduler itself is unreachable: distributed reports that
                continue
            now = time.monotonic()
            since = None if alive else (since or now)
            if since is not None and now - since >= self._grace_s:
                self._error = WorkersLostError(
                    f"every Dask worker left the cluster at {self._address()} and "
                    f"none joined again within {self._grace_s:g} s (--worker-wait): start workers "
                    "(e.g. mountproc worker ADDRESS), then run the same command again to resume"
                )
                self._on_lost()
                return


def thread_count(client: Client) -> int:
    """How many tasks the cluster's workers run at once (their threads, summed)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return sum(int(w.get("nthreads", 1)) for w in workers.values())
