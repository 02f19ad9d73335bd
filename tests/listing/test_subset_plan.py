"""Tests of the bounded figures of _listing.sharding: the largest shard noted while cutting, and
a subset's files and plan totals read without copying the listing."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

# imported as a module: pytest would collect a bare ``test_subset`` as a test
from mountproc._listing import listing as _listing
from mountproc._listing import sharding as _sharding
from mountproc._listing.listing import Patterns, write_listing
from mountproc._listing.sharding import ShardBounds, iter_shards, write_plan
from mountproc._records import FileEntry

ALL = Patterns(["*"], [])


def make_tree(root: Path, files: dict[str, int]) -> Path:
    """Create files (relative path -> size in bytes) under ``root``."""
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


def listing_of(tmp_path: Path, files: dict[str, int], patterns: Patterns = ALL) -> Path:
    out = tmp_path / "listing.parquet"
    write_listing(make_tree(tmp_path / "root", files), patterns, out)
    return out


def varied(tmp_path: Path) -> Path:
    """Folders of different sizes, files of different sizes, and a few skipped entries."""
    files = {
        f"d{d}/f{i:03d}.jpg": (d * 37 + i * 11) % 90 + 1 for d in range(6) for i in range(d * 9)
    }
    files.update({"d2/skip.txt": 5, "top.txt": 3})
    return listing_of(tmp_path, files, Patterns(["*.jpg"], []))


def test_the_largest_shard_is_noted_while_cutting(tmp_path: Path) -> None:
    listing = varied(tmp_path)
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(7, 250))
    shards = [entries for _, entries in iter_shards(plan.path)]
    assert plan.shards == len(shards) > 3
    assert plan.largest_files == max(len(entries) for entries in shards)
    assert plan.largest_bytes == max(sum(e.size for e in entries) for entries in shards)
    assert plan.largest_bytes <= 250
    assert plan.largest_files <= 7


def test_a_file_over_max_bytes_is_the_largest_shard(tmp_path: Path) -> None:
    listing = listing_of(tmp_path, {"a": 10, "b": 500, "c": 10})
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(5, 100))
    assert (plan.shards, plan.largest_files, plan.largest_bytes) == (3, 1, 500)


@pytest.mark.parametrize("size", [1, 4, 13, 100])
def test_subset_plan_has_the_written_plans_totals(tmp_path: Path, size: int) -> None:
    listing = varied(tmp_path)
    subset = _sharding.test_subset(listing, size)
    bounds = ShardBounds(3, 120)
    written = write_plan(listing, tmp_path / "plan.parquet", bounds, subset)
    totals = _sharding.subset_plan(listing, subset, bounds)
    assert (totals.shards, totals.files, totals.bytes) == (
        written.shards,
        written.files,
        written.bytes,
    )
    assert (totals.largest_files, totals.largest_bytes) == (
        written.largest_files,
        written.largest_bytes,
    )
    assert totals.files == min(size, 135)


def test_subset_entries_are_the_written_plans_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row numbers count across the listing's row groups; entries come in listing order."""
    monkeypatch.setattr(_listing, "BATCH_ROWS", 4)
    listing = varied(tmp_path)
    assert pq.ParquetFile(listing).metadata.num_row_groups > 10
    subset = _sharding.test_subset(listing, 9)
    one_each = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(1, 1 << 62), subset)
    expected = [entries[0] for _, entries in iter_shards(one_each.path)]
    found = _sharding.subset_entries(listing, subset)
    assert found == expected
    assert len(found) == 9
    assert found[0] == FileEntry(
        "d1/f000.jpg", 38, os.stat(tmp_path / "root/d1/f000.jpg").st_mtime_ns
    )


def test_subset_entries_of_nothing(tmp_path: Path) -> None:
    listing = listing_of(tmp_path, {"a.jpg": 1})
    assert _sharding.subset_entries(listing, set()) == []
    assert _sharding.subset_plan(listing, set(), ShardBounds(2, 9)).shards == 0
