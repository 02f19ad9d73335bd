"""One directory's entries classified into listing rows: the step that every crawl repeats.

A selected regular file, the bulk of any tree, costs one stat and a few appends to the columns
of ``Rows`` (no object of its own); any other entry goes the general way (``entry_items``): a
symlink, FIFO, socket or device is a skipped row (never followed, never opened), an excluded
directory a skipped row, a directory to descend into a ``Subdir``, and an error of a sick mount
(ENOTCONN, ESTALE...) comes just before the unreadable row it caused.

The serial crawl of a healthy directory takes a quicker way to the same items: names read at once,
each ``lstat``'ed relative to the open directory (``listing``), and classified by mode in bulk
(``classify_stats``).
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

from mountproc._mounts.table import SICK_ERRNOS
from mountproc._records import Kind

_FILE = Kind.FILE.value
JUNK_REASON = "OS metadata, a default exclude (Job(default_excludes=False) keeps it)"
UNSELECTED = "not selected by include/exclude patterns"
_by_name = attrgetter("name")
_mode, _size, _mtime = attrgetter("st_mode"), attrgetter("st_size"), attrgetter("st_mtime_ns")


@dataclass(frozen=True)
class Listed:
    """One row of the listing: a file to process (``skip_reason is None``) or a skipped entry."""

    path: str
    kind: Kind
    size: int | None = None
    mtime_ns: int | None = None
    skip_reason: str | None = None


class Patterns:
    """Case-insensitive include/exclude globs; a pattern with ``/`` matches the relative path,
    one without matches the name. ``junk`` are excludes of their own (the default excludes of
    OS metadata), named apart in the listing's reasons."""

    def __init__(
        self, include: Iterable[str], exclude: Iterable[str], junk: Iterable[str] = ()
    ) -> None:
        include, exclude, junk = list(include), list(exclude), list(junk)
        self._include = None if "*" in include else _compile(include)  # "*" matches every name
        self._exclude = _compile([*exclude, *junk])
        self._junk = _compile(junk)
        self.selects_all = self._exclude is None and self._include is None
        """Every file is included (no pattern needs matching)."""
        by_name = not any("/" in p for p in (*include, *exclude, *junk))
        self._names = (_Globs([*exclude, *junk]), _Globs(include)) if by_name else None

    def excluded(self, relpath: str) -> bool:
        """True when an exclude pattern (or a junk one) matches."""
        return self._exclude is not None and _matches(self._exclude, relpath)

    def junk(self, relpath: str) -> bool:
        """True when a junk pattern (a default exclude of OS metadata) matches."""
        return self._junk is not None and _matches(self._junk, relpath)

    def included(self, relpath: str) -> bool:
        """True when an include pattern matches and no exclude pattern does."""
        if self.excluded(relpath):
            return False
        return self._include is None or _matches(self._include, relpath)

    def rejected(self, prefix: str, names: list[str]) -> set[str]:
        """Those of ``names`` (sorted, of files in the directory ``prefix``) that ``included``
        rejects; when no pattern has a ``/``, found by name, in bulk."""
        if self.selects_all:
            return set()
        if self._names is None:
            return {name for name in names if not self.included(prefix + name)}
        exclude, include = self._names
        out = set(exclude.matching(names))
        if self._include is not None:
            out.update(set(names).difference(include.matching(names)))
        return out


class _Globs:
    """Name globs matched against a sorted directory's names in bulk. A name is tried only if its
    first character can begin a match: names share first characters in runs, found by bisection,
    so a directory of ``f*`` files meets the default excludes without one match."""

    def __init__(self, globs: list[str]) -> None:
        self._regex = re.compile("|".join(map(fnmatch.translate, globs)) or "(?!)", re.I | re.S)
        firsts = [glob[0] for glob in globs if glob[:1] not in ("", "*", "?", "[")]
        self._firsts = None  # some glob may begin with any character
        if len(firsts) == len(globs):
            self._firsts = re.compile("|".join(map(re.escape, firsts)), re.I)
        self._may_begin: dict[str, bool] = {}

    def matching(self, names: list[str]) -> list[str]:
        """Those of ``names`` (sorted) that a glob matches, in order."""
        if self._firsts is None:
            return list(filter(self._regex.match, names))
        found: list[str] = []
        start, end = 0, len(names)
        while start < end:
            first = names[start][0]
            stop = bisect.bisect_left(names, chr(ord(first) + 1), start) if first < _LAST else end
            if self._begins(first):
                found.extend(filter(self._regex.match, names[start:stop]))
            start = stop
        return found

    def _begins(self, first: str) -> bool:
        known = self._may_begin.get(first)
        if known is None:
            assert self._firsts is not None
            known = self._may_begin[first] = self._firsts.fullmatch(first) is not None
        return known


_LAST = chr(0x10FFFF)


def _compile(patterns: Iterable[str]) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    pats = list(patterns)
    if not pats:
        return None
    by_name = [fnmatch.translate(p) for p in pats if "/" not in p] or ["(?!)"]
    by_path = [fnmatch.translate(p.strip("/")) for p in pats if "/" in p] or ["(?!)"]
    return re.compile("|".join(by_name), re.I | re.S), re.compile("|".join(by_path), re.I | re.S)


def _matches(compiled: tuple[re.Pattern[str], re.Pattern[str]], relpath: str) -> bool:
    name = relpath.rpartition("/")[2]
    return bool(compiled[0].match(name) or compiled[1].match(relpath))


@dataclass(slots=True)
class Rows:
    """Consecutive rows of the listing, as columns."""

    paths: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    sizes: list[int | None] = field(default_factory=list)
    mtimes: list[int | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, row: Listed) -> None:
        """Append one row."""
        self.paths.append(row.path)
        self.kinds.append(row.kind.value)
        self.sizes.append(row.size)
        self.mtimes.append(row.mtime_ns)
        self.reasons.append(row.skip_reason)

    def extend(self, other: Rows) -> None:
        """Append ``other``'s rows."""
        for mine, theirs in zip(self.columns(), other.columns(), strict=True):
            mine.extend(theirs)

    def take(self, n: int) -> Rows:
        """Remove the first ``n`` rows and return them."""
        head = Rows(*(col[:n] for col in self.columns()))
        for col in self.columns():
            del col[:n]
        return head

    def columns(self) -> tuple[list[Any], ...]:
        """The five lists, in the listing's column order."""
        return self.paths, self.kinds, self.sizes, self.mtimes, self.reasons

    def listed(self) -> Iterator[Listed]:
        """The rows as ``Listed``."""
        for path, kind, size, mtime, reason in zip(*self.columns(), strict=True):
            yield Listed(path, Kind(kind), size, mtime, reason)


class Entry(Protocol):
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
class Subdir:
    """A directory to descend into."""

    path: str
    rel: str


ScanItem = Rows | OSError | Subdir


def open_dir(path: str) -> list[os.DirEntry[str]] | OSError:
    """A directory's entries sorted by name, or why it cannot be listed."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=_by_name)
    except OSError as exc:
        return exc


def scan(entries: Iterable[Entry], prefix: str, patterns: Patterns) -> list[ScanItem]:
    """Classify entries (stat'ing the files) into rows, sick errors and subdirectories."""
    items: list[ScanItem] = []
    rows = Rows()
    everything = patterns.selects_all
    for entry in entries:
        rel = prefix + entry.name
        try:  # the bulk of a tree, at the least cost: a selected regular file
            if (everything or patterns.included(rel)) and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                rows.paths.append(rel)
                rows.kinds.append(_FILE)
                rows.sizes.append(st.st_size)
                rows.mtimes.append(st.st_mtime_ns)
                rows.reasons.append(None)
                continue
        except OSError:
            pass  # entry_items finds out what it is, and records why
        rows = _add_items(entry_items(entry, rel, patterns), rows, items)
    if rows.paths:
        items.append(rows)
    return items


def _add_items(
    found: Iterable[Listed | OSError | Subdir], rows: Rows, items: list[ScanItem]
) -> Rows:
    """Add rows to ``rows``; anything else ends it (added to ``items``): return the current rows."""
    for item in found:
        if isinstance(item, Listed):
            rows.add(item)
            continue
        if rows.paths:
            items.append(rows)
            rows = Rows()
        items.append(item)
    return rows


def pack(found: Iterable[Listed | OSError | Subdir]) -> list[ScanItem]:
    """Items with consecutive rows gathered into ``Rows``."""
    items: list[ScanItem] = []
    rows = _add_items(found, Rows(), items)
    return [*items, rows] if rows.paths else items


def entry_items(entry: Entry, rel: str, patterns: Patterns) -> Sequence[Listed | OSError | Subdir]:
    """One entry's rows (a sick error first, if any), or the subdirectory to descend into."""
    try:
        is_dir = entry.is_dir(follow_symlinks=False)  # may stat when d_type is unknown
    except OSError as exc:
        return unreadable(exc, rel, "cannot stat")
    if is_dir:
        return [_directory(entry.path, rel, patterns)]
    try:
        return [_classify(entry, rel, patterns)]
    except OSError as exc:  # d_type unknown and the stat failed (e.g. a stale NFS handle)
        return unreadable(exc, rel, "cannot stat")


def unreadable(exc: OSError, rel: str, what: str) -> list[Listed | OSError]:
    """The unreadable row that ``exc`` makes of ``rel``, after ``exc`` itself if a sick mount
    gave it."""
    row = Listed(rel, Kind.UNREADABLE, skip_reason=f"{what}: {exc.strerror}")
    return [exc, row] if exc.errno in SICK_ERRNOS else [row]


def _directory(path: str, rel: str, patterns: Patterns) -> Listed | Subdir:
    if patterns.excluded(rel):
        why = JUNK_REASON if patterns.junk(rel) else "directory excluded by pattern"
        return Listed(rel, Kind.DIRECTORY, skip_reason=why)
    return Subdir(path, rel)


def _unselected(rel: str, patterns: Patterns) -> Listed:
    return Listed(rel, Kind.FILE, skip_reason=JUNK_REASON if patterns.junk(rel) else UNSELECTED)


def _symlink(rel: str) -> Listed:
    return Listed(rel, Kind.SYMLINK, skip_reason="symlink (never followed)")


def _special(rel: str, kind: Kind) -> Listed:
    return Listed(rel, kind, skip_reason=f"not a regular file ({kind.value})")


def _classify(entry: Entry, rel: str, patterns: Patterns) -> Listed:
    is_link, is_file = entry.is_symlink(), entry.is_file(follow_symlinks=False)
    if is_link:
        return _symlink(rel)
    if is_file:
        if not patterns.included(rel):
            return _unselected(rel, patterns)
        st = entry.stat(follow_symlinks=False)
        return Listed(rel, Kind.FILE, st.st_size, st.st_mtime_ns)
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return _special(rel, Kind.UNREADABLE)
    return _special(rel, kind_of(mode))


def kind_of(mode: int) -> Kind:
    """The kind of entry that isn't a regular file, a directory or a symlink, from its mode."""
    if stat.S_ISFIFO(mode):
        return Kind.FIFO
    if stat.S_ISSOCK(mode):
        return Kind.SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return Kind.DEVICE
    return Kind.OTHER


# --- the serial crawl's quick way: entries classified by the mode of their lstat -----------------


def classify_stats(
    path: str, names: list[str], stats: list[os.stat_result], prefix: str, patterns: Patterns
) -> list[ScanItem]:
    """The items of entries whose ``lstat`` is known: what ``scan`` makes of them. Runs of
    selected regular files become rows a column at a time; only the other entries one by one."""
    rejected = patterns.rejected(prefix, names)
    formats = list(map(stat.S_IFMT, map(_mode, stats)))
    if not rejected and formats.count(stat.S_IFREG) == len(formats):  # the usual leaf directory
        return [_file_rows(names, stats, prefix)] if names else []
    others = [i for i, fmt in enumerate(formats) if fmt != stat.S_IFREG or names[i] in rejected]
    items: list[ScanItem] = []
    rows, start = Rows(), 0
    base = os.path.join(path, "")
    for i in others:
        rows.extend(_file_rows(names[start:i], stats[start:i], prefix))
        rel, start = prefix + names[i], i + 1
        rows = _add_items([_other(base + names[i], rel, stats[i].st_mode, patterns)], rows, items)
    rows.extend(_file_rows(names[start:], stats[start:], prefix))
    return [*items, rows] if rows.paths else items


def _other(path: str, rel: str, mode: int, patterns: Patterns) -> Listed | Subdir:
    """The row (or the subdirectory) of an entry that is not a selected regular file."""
    if stat.S_ISDIR(mode):
        return _directory(path, rel, patterns)
    if stat.S_ISLNK(mode):
        return _symlink(rel)
    if stat.S_ISREG(mode):
        return _unselected(rel, patterns)
    return _special(rel, kind_of(mode))


def _file_rows(names: list[str], stats: list[os.stat_result], prefix: str) -> Rows:
    """The rows of selected regular files, built a column at a time."""
    count = len(names)
    return Rows(
        list(map(prefix.__add__, names)),
        [_FILE] * count,
        list(map(_size, stats)),
        list(map(_mtime, stats)),
        [None] * count,
    )
