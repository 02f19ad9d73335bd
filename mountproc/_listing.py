"""A streaming, deterministic crawl of a source tree into a Parquet listing.

Directory entries are visited in sorted order (depth first), symlinks are never followed, and
non-regular files are never opened: they become ``skipped`` rows with the reason.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc._mounts import SICK_ERRNOS
from mountproc._records import Kind

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000

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


def crawl(root: Path, patterns: Patterns, on_sick: OnSick = _ignore) -> Iterator[Listed]:
    """Yield every entry under ``root`` in sorted, depth-first order."""
    for row in _crawl(root, patterns):
        if isinstance(row, OSError):
            on_sick(row)
            continue
        yield row


def _crawl(root: Path, patterns: Patterns) -> Iterator[Listed | OSError]:
    """The crawl; before an unreadable row caused by a mount's error, yield that error."""
    stack: list[Iterator[os.DirEntry[str]]] = []
    prefixes: list[str] = []
    opened = _open_dir(str(root))
    if isinstance(opened, OSError):
        yield from _unreadable(opened, ".", "cannot list directory")
        return
    stack.append(opened)
    prefixes.append("")
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)  # may stat when d_type is unknown
        except OSError as exc:
            yield from _unreadable(exc, rel, "cannot stat")
            continue
        if is_dir:
            if patterns.excluded(rel):
                yield Listed(rel, Kind.DIRECTORY, skip_reason="directory excluded by pattern")
                continue
            sub = _open_dir(entry.path)
            if isinstance(sub, OSError):
                yield from _unreadable(sub, rel, "cannot list directory")
            else:
                stack.append(sub)
                prefixes.append(rel + "/")
            continue
        try:
            yield _classify(entry, rel, patterns)
        except OSError as exc:  # d_type unknown and the stat failed (e.g. a stale NFS handle)
            yield from _unreadable(exc, rel, "cannot stat")


def _unreadable(exc: OSError, rel: str, what: str) -> Iterator[Listed | OSError]:
    if exc.errno in SICK_ERRNOS:
        yield exc
    yield Listed(rel, Kind.UNREADABLE, skip_reason=f"{what}: {exc.strerror}")


def _open_dir(path: str) -> Iterator[os.DirEntry[str]] | OSError:
    try:
        with os.scandir(path) as it:
            return iter(sorted(it, key=lambda e: e.name))
    except OSError as exc:
        return exc


def _classify(entry: os.DirEntry[str], rel: str, patterns: Patterns) -> Listed:
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


def _special_kind(entry: os.DirEntry[str]) -> Kind:
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


def display_path(path: str) -> str:
    """A valid-UTF-8 rendering of a path (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_listing(
    root: Path, patterns: Patterns, out: Path, on_sick: OnSick = _ignore
) -> ListingStats:
    """Crawl ``root`` into the Parquet file ``out`` in bounded batches."""
    entries = eligible = eligible_bytes = 0
    with pq.ParquetWriter(out, LISTING_SCHEMA) as writer:
        batch: list[Listed] = []
        for row in crawl(root, patterns, on_sick):
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
