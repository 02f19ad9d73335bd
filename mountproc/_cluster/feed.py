"""Per-file progress from the workers: a shard on a worker tells its counts as it goes (Dask's
worker events), and the driver keeps the counts of the shards in flight until each finishes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from distributed import Client, get_worker

T = TypeVar("T")
R = TypeVar("R")
COUNTED = ("ok", "failed", "skipped")


Report = Callable[[dict[str, int]], None]


def reporting(fn: Callable[[T, Report], R], topic: str) -> Callable[[T], R]:
    """``fn(item, report)`` as a one-argument task whose ``report`` sends a worker event."""
    return partial(_report_to, fn, topic)


def _report_to(fn: Callable[[T, Report], R], topic: str, item: T) -> R:
    worker = get_worker()
    return fn(item, lambda counts: worker.log_event(topic, counts))


class Feed:
    """The counts of the shards in flight, as their workers report them; ``on_change`` is
    called (from the client's event loop) after each report."""

    def __init__(self, client: Client, topic: str, on_change: Callable[[], None]) -> None:
        self._client, self._topic, self._on_change = client, topic, on_change
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}
        self._finished: set[int] = set()
        client.subscribe_topic(topic, self._handle)

    def _handle(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if not isinstance(msg, dict) or not isinstance(msg.get("shard"), int):
            return
        with self._lock:
            if msg["shard"] in self._finished:
                return  # a late report of a shard whose results are counted already
            self._counts[msg["shard"]] = {k: int(msg.get(k, 0)) for k in COUNTED}
        self._on_change()

    def finished(self, shard: int) -> None:
        """The shard's results are counted: forget its reports (before counting them)."""
        with self._lock:
            self._finished.add(shard)
            self._counts.pop(shard, None)

    def in_flight(self) -> dict[str, int]:
        """The files done by the shards in flight, by status."""
        with self._lock:
            return {k: sum(c[k] for c in self._counts.values()) for k in COUNTED}

    def close(self) -> None:
        """Stop listening."""
        self._client.unsubscribe_topic(self._topic)
