"""Reads source files ahead of the transform, hashing them as they are read (no Dask import).

On a network file system a read costs round trips: opening a file, its attributes and each
window of its bytes wait for the server. Reading the next files in threads while the transform
decodes the current one overlaps the two, and several reads in flight overlap their round trips
with each other (the worker chooses how many by the mount's kind). What was read is handed to
the transform (``SourceFile.open()`` serves it from memory) and hashed for the sample's record,
so every byte crosses the network once.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

INLINE_MAX = 64 * 1024 * 1024
"""Files up to this size are kept in memory for the transform; larger ones are hashed as they
stream past and read again by the transform from the mount."""

CHUNK = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class SourceRead:
    """One source file as read: its bytes (``None`` when too big to keep), their sha256, and the
    size and mtime of the open file before and after reading."""

    data: bytes | None
    sha256: str
    size: int
    mtime_ns: int
    changed_while_read: bool
    path: Path | None = None  # where to read the bytes again when not kept (a download's copy)


def read_source(path: Path) -> SourceRead:
    """Read and hash ``path`` (keeping the bytes if it is small enough)."""
    with path.open("rb", buffering=0) as f:
        before = os.fstat(f.fileno())
        if before.st_size <= INLINE_MAX:
            blob = f.readall()
            data, digest = blob, hashlib.sha256(blob).hexdigest()
        else:
            data, digest = None, _stream_hash(f)
        after = os.fstat(f.fileno())
    moved = (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns)
    return SourceRead(data, digest, after.st_size, after.st_mtime_ns, moved)


def _stream_hash(f: Any) -> str:
    sha = hashlib.sha256()
    while chunk := f.read(CHUNK):
        sha.update(chunk)
    return sha.hexdigest()


class ReadAhead(Generic[T]):
    """Reads ``items`` in order on ``threads`` threads, at most ``ahead`` before the consumer and,
    given their ``sizes``, at most ``budget`` bytes ahead (always at least the next one)."""

    def __init__(
        self,
        items: Sequence[T],
        read: Callable[[T], SourceRead],
        ahead: int = 1,
        threads: int = 1,
        sizes: Sequence[int] | None = None,
        budget: int = 0,
    ) -> None:
        self._items = items
        self._read = read
        self._ahead = ahead
        self._sizes = sizes
        self._budget = budget
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mountproc-read")

    def __iter__(self) -> Iterator[Future[SourceRead]]:
        """One future per item, in order; a read's error is raised by its future's ``result``."""
        pending: deque[tuple[Future[SourceRead], int]] = deque()
        held = 0  # bytes read or being read that the consumer has not taken yet
        for i, item in enumerate(self._items):
            size = self._sizes[i] if self._sizes is not None else 0
            pending.append((self._pool.submit(self._read, item), size))
            held += size
            while len(pending) > self._ahead or (len(pending) > 1 and self._over(held)):
                future, size = pending.popleft()
                held -= size
                yield future
        for future, _size in pending:
            yield future

    def _over(self, held: int) -> bool:
        return self._budget > 0 and held > self._budget

    def close(self) -> None:
        """Stop reading ahead (a read in flight finishes; its result is dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
