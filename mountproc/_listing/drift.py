"""What changed in the source since a run's listing: files added, removed, or changed (size or
mtime), counted by comparing a fresh listing with the run's own."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COLUMNS = ["path_raw", "size", "mtime_ns"]


def _selected(listing: Path) -> pa.Table:
    """The listing's selected files: raw path, size, mtime."""
    table = pq.read_table(listing, columns=[*COLUMNS, "skip_reason"])
    return table.filter(pc.is_null(table.column("skip_reason"))).select(COLUMNS)


def drift(before: Path, after: Path) -> dict[str, int]:
    """Files ``after`` has that ``before`` had not (added), the other way round (removed), and
    files in both whose size or mtime differ (changed)."""
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
