"""A streaming, deterministic crawl of a source tree into a Parquet listing.

Directory entries are visited in sorted order (depth first), symlinks are never followed, and
non-regular files are never opened: they become ``skipped`` rows with the reason.

One step lists one directory into its items (``_dirscan``): runs of rows kept as columns, the
errors of a sick mount, and the subdirectories that the serial crawl descends into in turn.
Serially (a local disk), as ``find`` does: a directory's names read at once, each ``lstat``'ed
relative to the open directory, classified by mode; a slice of names where an ``lstat`` fails
goes the general way, from ``os.DirEntry`` objects, which the parallel crawl always takes.
Given an executor, the crawl fans out (``_crawl.ordered_walk``): each step is a task, a large
directory's entries are classified in chunks, and the rows come in the serial order.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._listing.crawl import Task, ordered_walk
from mountproc._listing.dirscan import (
    Listed,
    Patterns,
    Rows,
    ScanItem,
    Subdir,
    classify_stats,
    open_dir,
    pack,
    scan,
    unreadable,
)
from mountproc._records import display_path

__all__ = [
    "LISTING_SCHEMA",
    "Listed",
    "ListingStats",
    "OnSick",
    "Patterns",
    "crawl",
    "display_path",
    "to_batch",
    "write_listing",
]

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
SPLIT_ABOVE = 2_000
"""A directory with more entries than this has them classified (stat'ed) in parallel chunks..."""
CHUNK_ENTRIES = 1_000
"""...of this many entries each: on NFS or sshfs every stat is a round trip to hide."""
WINDOW = 64
"""Tasks in flight at most in a parallel crawl."""
SLICE = 5_000
"""Entries of a directory the serial crawl classifies at a time."""
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")

DICTIONARY = ["kind", "skip_reason"]
"""The columns worth a dictionary: a handful of values each. For paths and numbers, unique or
nearly, the writer would only build one to throw it away (half the writing time)."""

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
class ListingStats:
    """What the crawl saw."""

    entries: int
    eligible: int
    eligible_bytes: int


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
    with closing(_blocks(root, patterns, on_sick, executor, window)) as blocks:
        for rows in blocks:
            yield from rows.listed()


def _blocks(
    root: Path, patterns: Patterns, on_sick: OnSick, executor: Executor | None, window: int
) -> Generator[Rows, None, None]:
    """The crawl's rows in runs; each error of a sick mount goes to ``on_sick`` in its place."""
    # The executor's workers must see ``root`` at the same path; on Dask, prefer
    # ``client.get_executor(pure=False)``: the tasks read a live tree, no key needs hashing.
    if executor is None:
        items = _serial(root, patterns)
    else:
        root_task = Task(_list_dir, (str(root), "", patterns, SPLIT_ABOVE, CHUNK_ENTRIES))
        items = ordered_walk(executor, root_task, partial(_expand, patterns), window)
    with closing(items):  # if on_sick raises, the parallel walk cancels what is pending
        for item in items:
            if isinstance(item, OSError):
                on_sick(item)
                continue
            yield item


def _serial(root: Path, patterns: Patterns) -> Generator[Rows | OSError, None, None]:
    """The serial crawl: each directory is listed when its turn comes (the crawl is lazy)."""
    stack = [_serial_dir(str(root), "", patterns)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, Subdir):
            stack.append(_serial_dir(item.path, item.rel, patterns))
        else:
            yield item


def _serial_dir(path: str, rel: str, patterns: Patterns) -> Iterator[ScanItem]:
    """The serial crawl's items of a directory, ``SLICE`` names at a time, each slice
    ``lstat``'ed relative to the directory and classified by mode; from the first slice where an
    ``lstat`` fails, the rest of the directory the general way, from ``DirEntry`` objects."""
    names = read_names(path)
    if isinstance(names, OSError):
        yield from pack(unreadable(names, rel or ".", "cannot list directory"))
        return
    prefix = rel + "/" if rel else ""
    names.reverse()  # to let go of the names a slice at a time from the end, in order
    while names:
        piece = names[: -SLICE - 1 : -1]
        del names[-SLICE:]
        stats = stat_names(path, piece)
        if stats is None:
            yield from _general_from(path, rel, piece[0], patterns)
            return
        yield from classify_stats(path, piece, stats, prefix, patterns)


def read_names(path: str) -> list[str] | OSError:
    """A directory's entry names, sorted, or why it cannot be listed (as ``open_dir`` fails)."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        return exc
    names.sort()
    return names


def stat_names(path: str, names: list[str]) -> list[os.stat_result] | None:
    """The ``lstat`` of each of ``names`` in the directory ``path``, or None if any failed.

    Each name is looked up in the open directory (``fstatat``, as ``find`` does), not along its
    full path; None too where a full path could be too long (``ENAMETOOLONG``), so that the
    general way, by full paths, finds what fails and how."""
    longest = max(map(len, names), default=0) * 4  # UTF-8 takes up to 4 bytes a character
    if len(os.fsencode(path)) + 1 + longest >= PATH_MAX:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        lstat = os.lstat
        return [lstat(name, dir_fd=fd) for name in names]
    except OSError:
        return None
    finally:
        os.close(fd)


def _general_from(path: str, rel: str, first: str, patterns: Patterns) -> Iterator[ScanItem]:
    """The items of the directory's entries from the name ``first`` on, the general way."""
    entries = open_dir(path)
    if isinstance(entries, OSError):
        yield from pack(unreadable(entries, rel or ".", "cannot list directory"))
        return
    start = bisect.bisect_left([entry.name for entry in entries], first)
    yield from _scan_slices(entries[start:], rel + "/" if rel else "", patterns)


@dataclass(frozen=True)
class _Chunk:
    """Consecutive entries of a large directory, to classify in a task of their own."""

    path: str
    prefix: str
    entries: tuple[_Facts, ...]


_Item = ScanItem | _Chunk


def _list_dir(path: str, rel: str, patterns: Patterns, split: int, chunk: int) -> Iterable[_Item]:
    """Task: one directory's items in order; above ``split`` entries, chunks still to classify."""
    entries = open_dir(path)
    if isinstance(entries, OSError):
        return pack(unreadable(entries, rel or ".", "cannot list directory"))
    prefix = rel + "/" if rel else ""
    if len(entries) <= split:
        return scan(entries, prefix, patterns)
    facts = [_facts(e) for e in entries]
    return [_Chunk(path, prefix, tuple(facts[i : i + chunk])) for i in range(0, len(facts), chunk)]


def _scan_slices(
    entries: list[os.DirEntry[str]], prefix: str, patterns: Patterns
) -> Iterator[ScanItem]:
    """The general way's items of a directory, ``SLICE`` entries at a time, letting go of each
    ``DirEntry`` (and the stat result it caches) once classified: a flat directory of a million
    files holds a million entries, not a million stat results and rows besides."""
    entries.reverse()
    while entries:
        piece = [entries.pop() for _ in range(min(SLICE, len(entries)))]
        yield from scan(piece, prefix, patterns)


# --- the parallel crawl: tasks take and return plain, picklable data -----------------------------


@dataclass(frozen=True)
class _Facts:
    """What one pass of READDIR told about an entry (with d_type, no stat was needed)."""

    name: str
    is_dir: bool = False
    is_link: bool = False
    is_file: bool = False
    error: OSError | None = None  # d_type unknown and the stat behind ``is_dir`` failed


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


def _facts(entry: os.DirEntry[str]) -> _Facts:
    try:  # all three answer from d_type, or from the one lstat that DirEntry caches
        if entry.is_dir(follow_symlinks=False):
            return _Facts(entry.name, is_dir=True)
        return _Facts(
            entry.name, is_link=entry.is_symlink(), is_file=entry.is_file(follow_symlinks=False)
        )
    except OSError as exc:
        return _Facts(entry.name, error=exc)


def _classify_chunk(chunk: _Chunk, patterns: Patterns) -> Sequence[_Item]:
    """Task: the items of a chunk of a large directory (the stats run here, in parallel)."""
    base = os.path.join(chunk.path, "")  # as DirEntry.path joins, once per chunk
    stubs = (_Stub(base + facts.name, facts) for facts in chunk.entries)
    return scan(stubs, chunk.prefix, patterns)


def _expand(patterns: Patterns, items: Sequence[_Item]) -> list[Rows | OSError | Task]:
    """On the driver: a task's items, with subdirectories and chunks as tasks of their own."""
    out: list[Rows | OSError | Task] = []
    for item in items:
        if isinstance(item, Subdir):
            out.append(Task(_list_dir, (item.path, item.rel, patterns, SPLIT_ABOVE, CHUNK_ENTRIES)))
        elif isinstance(item, _Chunk):
            out.append(Task(_classify_chunk, (item, patterns)))
        else:
            out.append(item)
    return out


def write_listing(
    root: Path,
    patterns: Patterns,
    out: Path,
    on_sick: OnSick = _ignore,
    executor: Executor | None = None,
) -> ListingStats:
    """Crawl ``root`` (over ``executor`` if given) into the Parquet file ``out`` in batches."""
    stats = ListingStats(0, 0, 0)
    pending = Rows()
    with pq.ParquetWriter(out, LISTING_SCHEMA, use_dictionary=DICTIONARY) as writer:
        for rows in _blocks(root, patterns, on_sick, executor, WINDOW):
            pending.extend(rows)
            while len(pending) >= BATCH_ROWS:
                stats = _write(writer, pending.take(BATCH_ROWS), stats)
        stats = _write(writer, pending, stats)
    pa.default_memory_pool().release_unused()  # a pool may keep what was freed
    log.info("listed %d entries under %s: %d files to process", stats.entries, root, stats.eligible)
    return stats


def _write(writer: pq.ParquetWriter, rows: Rows, stats: ListingStats) -> ListingStats:
    """Write one batch; return ``stats`` with its rows counted."""
    batch = to_batch(rows)
    eligible = pc.is_null(batch.column("skip_reason"))
    selected = pc.sum(pc.filter(batch.column("size"), eligible)).as_py() or 0
    writer.write_batch(batch)
    return ListingStats(
        stats.entries + batch.num_rows,
        stats.eligible + batch.column("skip_reason").null_count,
        stats.eligible_bytes + selected,
    )


def to_batch(rows: Rows) -> pa.RecordBatch:
    """Rows as a record batch of the listing."""
    try:  # valid UTF-8 (nearly always): the raw bytes are the very same buffer
        path = arrow.array(rows.paths, pa.string())
        raw = path.cast(pa.binary())
    except UnicodeEncodeError:  # undecodable bytes, surrogate-escaped by os.fsdecode
        path = arrow.array([display_path(p) for p in rows.paths], pa.string())
        raw = arrow.array([os.fsencode(p) for p in rows.paths], pa.binary())
    columns = [
        path,
        raw,
        arrow.array(rows.kinds, pa.string()),
        arrow.array(rows.sizes, pa.int64()),
        arrow.array(rows.mtimes, pa.int64()),
        arrow.array(rows.reasons, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=LISTING_SCHEMA)
