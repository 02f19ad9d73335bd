"""A streaming, deterministic crawl of a source tree into a Parquet listing.

Directory entries are visited in sorted order (depth first), symlinks are never followed, and
non-regular files are never opened: they become ``skipped`` rows with the reason.

Given an executor, the crawl fans out (``_crawl.ordered_walk``): one task lists one directory,
a large directory's entries are classified in chunks, and the rows come in the serial order.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc._crawl import Task, ordered_walk
from mountproc._mounts import SICK_ERRNOS
from mountproc._records import Kind

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
SPLIT_ABOVE = 2_000
"""A directory with more entries than this has them classified (stat'ed) in parallel chunks..."""
CHUNK_ENTRIES = 1_000
"""...of this many entries each: on NFS or sshfs every stat is a round trip to hide."""
WINDOW = 64
"""Tasks in flight at most in a parallel crawl."""

LISTING_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("path_raw", pa.binary()),
        ("kind", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("skip_reason", pa.string()),
    ]
)


@dataclass(frozen=True)
class Listed:
    """One row of the listing: a file to process (``skip_reason is None``) or a skipped entry."""

    path: str
    kind: Kind
    size: int | None = None
    mtime_ns: int | None = None
    skip_reason: str | None = None


@dataclass(frozen=True)
class ListingStats:
    """What the crawl saw."""

    entries: int
    eligible: int
    eligible_bytes: int


class Patterns:
    """Case-insensitive include/exclude globs; a pattern with ``/`` matches the relative path,
    one without matches the name."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str]) -> None:
        self._include = _compile(include)
        self._exclude = _compile(exclude)

    def excluded(self, relpath: str) -> bool:
        """True when an exclude pattern matches."""
        return self._exclude is not None and _matches(self._exclude, relpath)

    def included(self, relpath: str) -> bool:
        """True when an include pattern matches and no exclude pattern does."""
        if self.excluded(relpath):
            return False
        return self._include is None or _matches(self._include, relpath)


def _compile(patterns: Iterable[str]) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    pats = list(patterns)
    if not pats:
        return None
    by_name = [fnmatch.translate(p) for p in pats if "/" not in p] or ["(?!)"]
    by_path = [fnmatch.translate(p.strip("/")) for p in pats if "/" in p] or ["(?!)"]
    return re.compile("|".join(by_name), re.I | re.S), re.compile("|".join(by_path), re.I | re.S)


def _matches(compiled: tuple[re.Pattern[str], re.Pattern[str]], relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    return bool(compiled[0].match(name) or compiled[1].match(relpath))


OnSick = Callable[[OSError], None]
"""Called with an error that a dead mount gives (ENOTCONN, ESTALE...): raise to stop the crawl,
return to record the entry as unreadable."""


def _ignore(_exc: OSError) -> None:
    return None


def crawl(
    root: Path,
    patterns: Patterns,
    on_sick: OnSick = _ignore,
    executor: Executor | None = None,
    window: int = WINDOW,
) -> Iterator[Listed]:
    """Yield every entry under ``root``, sorted and depth first; over ``executor`` if given."""
    # The executor's workers must see ``root`` at the same path; on Dask, prefer
    # ``client.get_executor(pure=False)``: the tasks read a live tree, no key needs hashing.
    if executor is None:
        rows = _crawl(root, patterns)
    else:
        root_task = Task(_list_dir, (str(root), "", patterns, SPLIT_ABOVE, CHUNK_ENTRIES))
        rows = ordered_walk(executor, root_task, partial(_expand, patterns), window)
    with closing(rows):  # if on_sick raises, the parallel walk cancels what is pending
        for row in rows:
            if isinstance(row, OSError):
                on_sick(row)
                continue
            yield row


def _crawl(root: Path, patterns: Patterns) -> Generator[Listed | OSError, None, None]:
    """The crawl; before an unreadable row caused by a mount's error, yield that error."""
    opened = _open_dir(str(root))
    if isinstance(opened, OSError):
        yield from _unreadable(opened, ".", "cannot list directory")
        return
    stack, prefixes = [iter(opened)], [""]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            prefixes.pop()
            continue
        for item in _entry_items(entry, prefixes[-1] + entry.name, patterns):
            if not isinstance(item, _Subdir):
                yield item
                continue
            sub = _open_dir(item.path)  # opened only when its turn comes: the crawl is lazy
            if isinstance(sub, OSError):
                yield from _unreadable(sub, item.rel, "cannot list directory")
            else:
                stack.append(iter(sub))
                prefixes.append(item.rel + "/")


class _Entry(Protocol):
    """What classification reads of an ``os.DirEntry`` (or of a ``_Stub`` of one)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    def is_dir(self, *, follow_symlinks: bool = ...) -> bool: ...
    def is_file(self, *, follow_symlinks: bool = ...) -> bool: ...
    def is_symlink(self) -> bool: ...
    def stat(self, *, follow_symlinks: bool = ...) -> os.stat_result: ...


@dataclass(frozen=True)
class _Subdir:
    """A directory to descend into."""

    path: str
    rel: str


def _entry_items(
    entry: _Entry, rel: str, patterns: Patterns
) -> Sequence[Listed | OSError | _Subdir]:
    """One entry's rows (a sick error first, if any), or the subdirectory to descend into."""
    try:
        is_dir = entry.is_dir(follow_symlinks=False)  # may stat when d_type is unknown
    except OSError as exc:
        return _unreadable(exc, rel, "cannot stat")
    if is_dir:
        if patterns.excluded(rel):
            return [Listed(rel, Kind.DIRECTORY, skip_reason="directory excluded by pattern")]
        return [_Subdir(entry.path, rel)]
    try:
        return [_classify(entry, rel, patterns)]
    except OSError as exc:  # d_type unknown and the stat failed (e.g. a stale NFS handle)
        return _unreadable(exc, rel, "cannot stat")


def _unreadable(exc: OSError, rel: str, what: str) -> list[Listed | OSError]:
    row = Listed(rel, Kind.UNREADABLE, skip_reason=f"{what}: {exc.strerror}")
    return [exc, row] if exc.errno in SICK_ERRNOS else [row]


def _open_dir(path: str) -> list[os.DirEntry[str]] | OSError:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        return exc


def _classify(entry: _Entry, rel: str, patterns: Patterns) -> Listed:
    is_link, is_file = entry.is_symlink(), entry.is_file(follow_symlinks=False)
    if is_link:
        return Listed(rel, Kind.SYMLINK, skip_reason="symlink (never followed)")
    if is_file:
        if not patterns.included(rel):
            return Listed(rel, Kind.FILE, skip_reason="not selected by include/exclude patterns")
        st = entry.stat(follow_symlinks=False)
        return Listed(rel, Kind.FILE, st.st_size, st.st_mtime_ns)
    kind = _special_kind(entry)
    return Listed(rel, kind, skip_reason=f"not a regular file ({kind.value})")


def _special_kind(entry: _Entry) -> Kind:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return Kind.UNREADABLE
    if stat.S_ISFIFO(mode):
        return Kind.FIFO
    if stat.S_ISSOCK(mode):
        return Kind.SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return Kind.DEVICE
    return Kind.OTHER


# --- the parallel crawl: tasks take and return plain, picklable data -----------------------------


@dataclass(frozen=True)
class _Facts:
    """What one pass of READDIR told about an entry (with d_type, no stat was needed)."""

    name: str
    is_dir: bool = False
    is_link: bool = False
    is_file: bool = False
    error: OSError | None = None  # d_type unknown and the stat behind ``is_dir`` failed


@dataclass(frozen=True)
class _Chunk:
    """Consecutive entries of a large directory, to classify in a task of their own."""

    path: str
    prefix: str
    entries: tuple[_Facts, ...]


class _Stub:
    """An ``os.DirEntry`` rebuilt from its ``_Facts`` (on another worker); only ``stat`` does I/O,
    always without following symlinks, as the classification asks."""

    def __init__(self, path: str, facts: _Facts) -> None:
        self.name = facts.name
        self.path = path
        self._facts = facts

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if self._facts.error is not None:
            raise self._facts.error
        return self._facts.is_dir

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._facts.is_file

    def is_symlink(self) -> bool:
        return self._facts.is_link

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.lstat(self.path)


_Item = Listed | OSError | _Subdir | _Chunk


def _list_dir(path: str, rel: str, patterns: Patterns, split: int, chunk: int) -> list[_Item]:
    """Task: one directory's items in order; above ``split`` entries, chunks still to classify."""
    entries = _open_dir(path)
    if isinstance(entries, OSError):
        return [*_unreadable(entries, rel or ".", "cannot list directory")]
    prefix = rel + "/" if rel else ""
    if len(entries) <= split:
        return [item for e in entries for item in _entry_items(e, prefix + e.name, patterns)]
    facts = [_facts(e) for e in entries]
    return [_Chunk(path, prefix, tuple(facts[i : i + chunk])) for i in range(0, len(facts), chunk)]


def _facts(entry: os.DirEntry[str]) -> _Facts:
    try:  # all three answer from d_type, or from the one lstat that DirEntry caches
        if entry.is_dir(follow_symlinks=False):
            return _Facts(entry.name, is_dir=True)
        return _Facts(
            entry.name, is_link=entry.is_symlink(), is_file=entry.is_file(follow_symlinks=False)
        )
    except OSError as exc:
        return _Facts(entry.name, error=exc)


def _classify_chunk(chunk: _Chunk, patterns: Patterns) -> list[_Item]:
    """Task: the items of a chunk of a large directory (the stats run here, in parallel)."""
    base = os.path.join(chunk.path, "")  # as DirEntry.path joins, once per chunk
    return [
        item
        for facts in chunk.entries
        for item in _entry_items(
            _Stub(base + facts.name, facts), chunk.prefix + facts.name, patterns
        )
    ]


def _expand(patterns: Patterns, items: list[_Item]) -> list[Listed | OSError | Task]:
    """On the driver: a task's items, with subdirectories and chunks as tasks of their own."""
    out: list[Listed | OSError | Task] = []
    for item in items:
        if isinstance(item, _Subdir):
            out.append(Task(_list_dir, (item.path, item.rel, patterns, SPLIT_ABOVE, CHUNK_ENTRIES)))
        elif isinstance(item, _Chunk):
            out.append(Task(_classify_chunk, (item, patterns)))
        else:
            out.append(item)
    return out


def display_path(path: str) -> str:
    """A valid-UTF-8 rendering of a path (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_listing(
    root: Path,
    patterns: Patterns,
    out: Path,
    on_sick: OnSick = _ignore,
    executor: Executor | None = None,
) -> ListingStats:
    """Crawl ``root`` (over ``executor`` if given) into the Parquet file ``out`` in batches."""
    entries = eligible = eligible_bytes = 0
    with pq.ParquetWriter(out, LISTING_SCHEMA) as writer:
        batch: list[Listed] = []
        for row in crawl(root, patterns, on_sick, executor):
            entries += 1
            if row.skip_reason is None:
                eligible += 1
                eligible_bytes += row.size or 0
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                writer.write_batch(_to_batch(batch))
                batch = []
        writer.write_batch(_to_batch(batch))
    log.info("listed %d entries under %s: %d files to process", entries, root, eligible)
    return ListingStats(entries, eligible, eligible_bytes)


def _to_batch(rows: list[Listed]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "path": [display_path(r.path) for r in rows],
            "path_raw": [os.fsencode(r.path) for r in rows],
            "kind": [r.kind.value for r in rows],
            "size": [r.size for r in rows],
            "mtime_ns": [r.mtime_ns for r in rows],
            "skip_reason": [r.skip_reason for r in rows],
        },
        schema=LISTING_SCHEMA,
    )
