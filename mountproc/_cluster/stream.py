"""Work on the cluster: a bounded stream of tasks, the cluster as an Executor, and a watch for
a cluster left without workers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from distributed import Client, as_completed, get_worker

from mountproc._errors import WorkersLostError

T = TypeVar("T")
R = TypeVar("R")


def _located(fn: Callable[[T], R], item: T) -> tuple[str, R]:
    """Run ``fn`` on a worker; return that worker's address with the result."""
    return get_worker().address, fn(item)


class TaskStream(Generic[T, R]):
    """Runs ``fn`` on every item with at most ``window`` tasks in flight (a number, or a function
    asked again as tasks finish: workers of batch jobs join while the run goes on); iterating
    yields each item with its result, or with the exception that ended it (a lost worker, an
    error in ``fn``, a cancellation), and the address of the worker that ran it ("" if
    unknown)."""

    def __init__(
        self,
        client: Client,
        fn: Callable[[T], R],
        items: Iterable[T],
        key: Callable[[T], str],
        window: int | Callable[[], int],
        retries: int = 1,
        resources: dict[str, float] | None = None,
    ) -> None:
        self._client, self._fn, self._key, self._retries = client, fn, key, retries
        self._resources = resources or None
        self._items = iter(items)
        self._window = window
        self._last_size = 1
        self._pending: dict[str, tuple[T, Any]] = {}
        self._stream = as_completed()
        self._lock = threading.Lock()
        self._cancelled = False

    def _size(self) -> int:
        if callable(self._window):
            # the scheduler did not answer: keep the last size (its loss is reported elsewhere)
            with contextlib.suppress(Exception):
                self._last_size = self._window()
            return self._last_size
        return self._window

    def _fill(self) -> None:
        """Submit items until the window is full (or the items run out)."""
        size = max(1, self._size())
        while len(self._pending) < size and self._submit_next():
            pass

    def _submit_next(self) -> bool:
        with self._lock:
            item = None if self._cancelled else next(self._items, None)
            if item is None:
                return False
            fut = self._client.submit(
                _located,
                self._fn,
                item,
                key=self._key(item),
                pure=False,
                retries=self._retries,
                resources=self._resources,
            )
            self._pending[str(fut.key)] = (item, fut)
        self._stream.add(fut)
        return True

    def __iter__(self) -> Iterator[tuple[T, R | BaseException, str]]:
        self._fill()
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
            self._fill()
            yield item, outcome, worker

    def cancel(self) -> None:
        """Submit nothing more and cancel the tasks in flight (callable from any thread)."""
        with self._lock:
            self._cancelled = True
            futures = [fut for _, fut in self._pending.values()]
        if futures:
            self._client.cancel(futures)


def executor(client: Client) -> Executor:
    """The cluster as a ``concurrent.futures.Executor`` for work whose results are not cached:
    each call reads a live file system, so no key needs hashing (``pure=False``)."""
    pool: Executor = client.get_executor(pure=False)
    return pool


def worker_count(client: Client) -> int:
    """How many workers the scheduler knows now."""
    return len(client.scheduler_info(n_workers=-1).get("workers", {}))


P = TypeVar("P", bound="Poller")


class Poller:
    """A daemon thread that calls ``tick()`` every ``POLL_S`` seconds while its ``with`` block
    runs (joined at its end); a ``tick`` that returns True ends it early."""

    POLL_S = 1.0

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self: P) -> P:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> bool:
        """One round of the thread's work; True when it is done for good."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            if self.tick():
                return


class WorkerWatch(Poller):
    """Notices a cluster left without any worker (killed, evicted, scaled to zero): tasks would
    wait for one forever. After ``grace_s`` without a worker it calls ``on_lost`` and
    ``check()`` raises ``WorkersLostError``."""

    def __init__(self, client: Client, grace_s: float, on_lost: Callable[[], None]) -> None:
        super().__init__("mountproc-workers")
        self._client, self._grace_s, self._on_lost = client, grace_s, on_lost
        self._error: WorkersLostError | None = None
        self._since: float | None = None  # when the cluster was last seen with no worker

    def check(self) -> None:
        """Raise ``WorkersLostError`` once the cluster has been without workers too long."""
        if self._error is not None:
            raise self._error

    def _address(self) -> str:
        return str(getattr(self._client.scheduler, "address", None) or "the scheduler")

    def tick(self) -> bool:
        try:
            alive = worker_count(self._client) > 0
        except Exception:  # the scheduler itself is unreachable: distributed reports that
            return False
        now = time.monotonic()
        self._since = None if alive else (self._since or now)
        if self._since is None or now - self._since < self._grace_s:
            return False
        self._error = WorkersLostError(
            f"every Dask worker left the cluster at {self._address()} and "
            f"none joined again within {self._grace_s:g} s (--worker-wait): start workers "
            "(e.g. mountproc worker ADDRESS), then run the same command again to resume"
        )
        self._on_lost()
        return True


def thread_count(client: Client) -> int:
    """How many tasks the cluster's workers run at once (their threads, summed)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return sum(int(w.get("nthreads", 1)) for w in workers.values())
