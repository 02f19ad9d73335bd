"""Tests of the bounded work of _listing.sharding: shards cut a batch at a time as the per-file
rule cuts them, the largest shard noted while cutting, and a subset's files and plan totals read
without copying the listing."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

# imported as a module: pytest would collect a bare ``test_subset`` as a test
from helpers import make_sized_tree

from mountproc._listing import listing as _listing
from mountproc._listing import sharding as _sharding
from mountproc._listing.listing import Patterns, write_listing
from mountproc._listing.sharding import ShardBounds, iter_shards, write_plan
from mountproc._records import FileEntry

ALL = Patterns(["*"], [])


def listing_of(tmp_path: Path, files: dict[str, int], patterns: Patterns = ALL) -> Path:
    out = tmp_path / "listing.parquet"
    write_listing(make_sized_tree(tmp_path / "root", files), patterns, out)
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


def _one_at_a_time(sizes: list[int], bounds: ShardBounds) -> list[int]:
    """The rule, file by file: a file opens a new shard when the current one is full (files,
    or bytes with it), unless the current one is empty."""
    shard, files, total, out = -1, 0, 0, []
    for size in sizes:
        full = files >= bounds.max_files or total + size > bounds.max_bytes
        if shard < 0 or (full and files > 0):
            shard, files, total = shard + 1, 0, 0
        files, total = files + 1, total + size
        out.append(shard)
    return out


def test_the_cutter_follows_the_rule_file_by_file_across_batches() -> None:
    rng = random.Random(18)
    for _ in range(2000):
        bounds = ShardBounds(rng.randint(1, 12), rng.randint(1, 300))
        choices = [0, 0, 1, 5, 50, 100, 400, rng.randint(0, 500)]
        sizes = [rng.choice(choices) for _ in range(rng.randint(0, 80))]
        cutter = _sharding._Cutter(bounds)
        got: list[int] = []
        start = 0
        while start < len(sizes):  # batches of any length
            stop = start + rng.randint(1, 20)
            got += cutter.cut(np.array(sizes[start:stop], dtype=np.int64)).tolist()
            start = stop
        assert got == _one_at_a_time(sizes, bounds), (bounds, sizes)
        shards = [[s for s, i in zip(sizes, got, strict=True) if i == n] for n in set(got)]
        assert cutter.most_files == max(map(len, shards), default=0)
        assert cutter.most_bytes == max(map(sum, shards), default=0)
