"""Tests of _listing.drift: two listings merged in the crawl's order count what was added,
removed and changed exactly as a join of the two would, batch boundaries and odd names included."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mountproc._listing import drift as _drift
from mountproc._listing import listing as _listing
from mountproc._listing.listing import LISTING_SCHEMA, Patterns, write_listing

ALL = Patterns(["*"], [])
NAMES = ["a/x/1.jpg", "a/x/2.jpg", "a-b/3.jpg", "a.txt", "a/z.jpg", "b/c/d/4.jpg", "b.jpg", "é/5"]


def make(root: Path, names: list[str]) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (len(name) % 5))
    return root


def listed(root: Path, out: Path, patterns: Patterns = ALL) -> Path:
    write_listing(root, patterns, out)
    return out


@pytest.mark.parametrize("batch_rows", [2, 1000])
def test_added_removed_and_changed_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    monkeypatch.setattr(_listing, "BATCH_ROWS", batch_rows)
    root = make(tmp_path / "src", NAMES)
    (root / os.fsdecode(b"bad-\xff.jpg")).write_bytes(b"1")
    before = listed(root, tmp_path / "before.parquet")
    (root / "a/x/1.jpg").unlink()  # removed
    (root / "b/c/d/4.jpg").unlink()  # removed
    make(root, ["a/x/15.jpg", "a-a/0.jpg", "zz/9.jpg"])  # added
    (root / "a.txt").write_bytes(b"longer than before")  # changed: size
    os.utime(root / "b.jpg", ns=(1, 1_000_000_000))  # changed: mtime
    after = listed(root, tmp_path / "after.parquet")
    expected = {"added": 3, "removed": 2, "changed": 2}
    assert _drift.drift(before, after) == expected
    assert _drift._joined(before, after) == expected
    assert _drift.drift(after, before) == {"added": 2, "removed": 3, "changed": 2}


def test_skipped_entries_are_not_files(tmp_path: Path) -> None:
    root = make(tmp_path / "src", NAMES)
    before = listed(root, tmp_path / "before.parquet")
    after = listed(root, tmp_path / "after.parquet", Patterns(["*.jpg"], []))
    assert _drift.drift(before, after) == {"added": 0, "removed": 2, "changed": 0}


def test_everything_new_or_gone(tmp_path: Path) -> None:
    full = listed(make(tmp_path / "src", NAMES), tmp_path / "full.parquet")
    (tmp_path / "none").mkdir()
    empty = listed(tmp_path / "none", tmp_path / "empty.parquet")
    assert _drift.drift(empty, full) == {"added": len(NAMES), "removed": 0, "changed": 0}
    assert _drift.drift(full, empty) == {"added": 0, "removed": len(NAMES), "changed": 0}


def test_a_listing_out_of_order_is_joined_instead(tmp_path: Path) -> None:
    """Merging [b, a] with [a, b] would count one added and one removed: the merge notices."""
    before = listed(make(tmp_path / "src", ["a.jpg", "b.jpg"]), tmp_path / "before.parquet")
    table = pq.read_table(before)
    backwards = tmp_path / "backwards.parquet"
    pq.write_table(table.take(pa.array([1, 0])).cast(LISTING_SCHEMA), backwards)
    with pytest.raises(_drift._OutOfOrder):
        _drift._merged(_drift._files(backwards), _drift._files(before))
    assert _drift.drift(backwards, before) == {"added": 0, "removed": 0, "changed": 0}
