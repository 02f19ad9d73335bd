"""What changed in the source since a run's listing: files added, removed, or changed (size or
mtime), counted by comparing a fresh listing with the run's own.

Both listings are in the crawl's order (``inputs.crawl_order``), so they are merged as two
sorted streams read in bounded batches: memory does not grow with the tree. A listing found out
of that order (never written by mountproc) is compared by a join of the two tables instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mountproc._listing.inputs import crawl_order
from mountproc._listing.sharding import batches

COLUMNS = ["path_raw", "size", "mtime_ns"]

_File = tuple[bytes, int, int]  # path_raw, size, mtime_ns


class _OutOfOrder(Exception):
    """A listing is not in the crawl's order: it cannot be merged."""


def drift(before: Path, after: Path) -> dict[str, int]:
    """Files ``after`` has that ``before`` had not (added), the other way round (removed), and
    files in both whose size or mtime differ (changed)."""
    try:
        return _merged(_files(before), _files(after))
    except _OutOfOrder:
        return _joined(before, after)


def _files(listing: Path) -> Iterator[_File]:
    """The listing's selected files in order, batch by batch."""
    columns = [*COLUMNS, "skip_reason"]
    for batch in batches(listing, columns):
        chosen = batch.filter(pc.is_null(batch.column("skip_reason"))).to_pydict()
        yield from zip(chosen["path_raw"], chosen["size"], chosen["mtime_ns"], strict=True)


def _merged(old: Iterator[_File], new: Iterator[_File]) -> dict[str, int]:
    """Merge two listings in the crawl's order, counting what differs; where they differ, each
    file is checked to come after the one before it in its listing."""
    counts = {"added": 0, "removed": 0, "changed": 0}
    a, b = next(old, None), next(new, None)
    before_a = before_b = b""  # the path of the file before ``a`` (``b``) in its listing
    while a is not None and b is not None:
        if a[0] == b[0]:  # the same file (nearly always): no key needed
            counts["changed"] += a[1:] != b[1:]
            before_a, before_b = a[0], b[0]
            a, b = next(old, None), next(new, None)
            continue
        key_a, key_b = _ordered(before_a, a[0]), _ordered(before_b, b[0])
        if key_a < key_b:
            counts["removed"] += 1
            before_a, a = a[0], next(old, None)
        else:
            counts["added"] += 1
            before_b, b = b[0], next(new, None)
    counts["removed"] += _rest(a, before_a, old)
    counts["added"] += _rest(b, before_b, new)
    return counts


def _ordered(before: bytes, path: bytes) -> tuple[str, ...]:
    """``path``'s key, checked to sort after ``before``'s (if any)."""
    key = crawl_order(os.fsdecode(path))
    if before and key <= crawl_order(os.fsdecode(before)):
        raise _OutOfOrder
    return key


def _rest(current: _File | None, before: bytes, files: Iterator[_File]) -> int:
    """The files left in a listing, ``current`` and the rest, checked to be in order."""
    count = 0
    while current is not None:
        _ordered(before, current[0])
        before, current = current[0], next(files, None)
        count += 1
    return count


def _selected(listing: Path) -> pa.Table:
    """The listing's selected files: raw path, size, mtime."""
    table = pq.read_table(listing, columns=[*COLUMNS, "skip_reason"])
    return table.filter(pc.is_null(table.column("skip_reason"))).select(COLUMNS)


def _joined(before: Path, after: Path) -> dict[str, int]:
    """Compare two listings in any order by joining them whole (memory grows with them)."""
    old, new = _selected(before), _selected(after)
    joined = old.join(
        new, "path_raw", join_type="full outer", left_suffix="_old", right_suffix="_new"
    )
    added = pc.sum(pc.is_null(joined.column("size_old"))).as_py() or 0
    removed = pc.sum(pc.is_null(joined.column("size_new"))).as_py() or 0
    both = joined.filter(
        pc.and_(pc.is_valid(joined.column("size_old")), pc.is_valid(joined.column("size_new")))
    )
    differ = pc.or_(
        pc.not_equal(both.column("size_old"), both.column("size_new")),
        pc.not_equal(both.column("mtime_ns_old"), both.column("mtime_ns_new")),
    )
    changed = pc.sum(differ).as_py() or 0
    return {"added": int(added), "removed": int(removed), "changed": int(changed)}
