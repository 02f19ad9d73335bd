"""A tree of tasks run over any ``concurrent.futures.Executor``, its values streamed in pre-order.

A task's result expands (on the driver) into slots: values, and subtasks whose own slots take
their place. The output is what a serial depth-first walk would give, whatever order the tasks
finish in. Each slot has a key, its position path (root ``()``, slot ``i`` of ``k`` is
``(*k, i)``), so pre-order is the order of keys: queued tasks are submitted earliest key first,
and the emission cursor only ever waits for the earliest task it has not yet consumed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Key = tuple[int, ...]

AHEAD_PER_SLOT = 8
"""Finished results waiting for the cursor, per slot of the window: enough lookahead to keep a
bushy tree busy, bounded so a stuck task does not let the rest of the tree pile up in memory."""


@dataclass(frozen=True)
class Task:
    """A call to run on an executor: a module-level function and picklable arguments."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


def ordered_walk(
    executor: Executor,
    root: Task,
    expand: Callable[[Any], Sequence[T | Task]],
    window: int = 64,
) -> Generator[T, None, None]:
    """Run ``root`` and the subtasks its results expand into; yield the values in pre-order."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    return _Walk(executor, expand, window).values(root)


class _Walk(Generic[T]):
    """The driver's state: tasks queued by key, running, and finished but not yet consumed."""

    def __init__(
        self, executor: Executor, expand: Callable[[Any], Sequence[T | Task]], window: int
    ) -> None:
        self._executor = executor
        self._expand = expand
        self._window = window
        self._ahead = AHEAD_PER_SLOT * window
        self._queued: list[tuple[Key, Task]] = []  # a heap: keys are unique, tasks never compared
        self._running: dict[Future[Any], Key] = {}
        self._ready: dict[Key, Sequence[T | Task]] = {}

    def values(self, root: Task) -> Generator[T, None, None]:
        """The cursor: a depth-first walk over the slots, waiting for each task's turn."""
        self._queued.append(((), root))
        try:
            stack: list[tuple[Key, Iterator[tuple[int, T | Task]]]] = [
                ((), enumerate(self._take(())))
            ]
            while stack:
                key, slots = stack[-1]
                nxt = next(slots, None)
                if nxt is None:
                    stack.pop()
                elif isinstance(nxt[1], Task):
                    sub = (*key, nxt[0])  # keys only for tasks: rows are the bulk
                    stack.append((sub, enumerate(self._take(sub))))
                else:
                    yield nxt[1]
        finally:  # on_sick raised, a task failed, or the consumer stopped early
            for future in self._running:
                future.cancel()

    def _take(self, key: Key) -> Sequence[T | Task]:
        """The slots of task ``key``, once it has run; meanwhile keep the window full."""
        while True:
            self._absorb([f for f in self._running if f.done()])
            self._fill()
            if key in self._ready:
                return self._ready.pop(key)
            if not self._running:  # cannot happen (see _fill), but never spin
                raise RuntimeError(f"the crawl waits for task {key}, which was never submitted")
            wait(self._running, return_when=FIRST_COMPLETED)

    def _fill(self) -> None:
        """Submit queued tasks, earliest first, while the window and the lookahead allow."""
        # No deadlock: each _take ends by consuming a result, so the next one starts with room
        # in the lookahead, and the task it waits for, if still queued, is the earliest.
        while (
            self._queued
            and len(self._running) < self._window
            and len(self._running) + len(self._ready) < self._ahead
        ):
            key, task = heapq.heappop(self._queued)
            self._running[self._executor.submit(task.fn, *task.args)] = key

    def _absorb(self, done: Iterable[Future[Any]]) -> None:
        """Expand finished results now, so that their subtasks can start before their turn."""
        for future in done:
            key = self._running.pop(future)
            slots = self._expand(future.result())  # an exception inside a task propagates
            self._ready[key] = slots
            for i, slot in enumerate(slots):
                if isinstance(slot, Task):
                    heapq.heappush(self._queued, ((*key, i), slot))
