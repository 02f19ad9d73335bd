"""Tests of _listing.sharding: deterministic shards and the round-robin test-mode subset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# imported as a module: pytest would collect a bare ``test_subset`` as a test
from helpers import make_sized_tree

from mountproc._listing import listing as _listing
from mountproc._listing import sharding as _sharding
from mountproc._listing.listing import Patterns, write_listing
from mountproc._listing.sharding import (
    NOT_IN_SUBSET,
    PLAN_SCHEMA,
    Plan,
    ShardBounds,
    iter_shards,
    write_plan,
)
from mountproc._records import FileEntry

ALL = Patterns(["*"], [])
ROOMY = ShardBounds(max_files=1000, max_bytes=1 << 30)


def listing_of(tmp_path: Path, files: dict[str, int], patterns: Patterns = ALL) -> Path:
    root = make_sized_tree(tmp_path / "root", files)
    out = tmp_path / "listing.parquet"
    write_listing(root, patterns, out)
    return out


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(plan.path).to_pylist()
    return rows


def shards_of(plan: Plan) -> list[list[str]]:
    """Paths per shard, in shard order."""
    return [
        [os.fsencode(e.path).decode() for e in entries] for _, entries in iter_shards(plan.path)
    ]


# --- bounds ------------------------------------------------------------------------------------


def test_shards_respect_file_and_byte_bounds(tmp_path: Path) -> None:
    sizes = {f"d{i % 3}/f{i:03d}": (i * 37) % 90 + 1 for i in range(60)}
    bounds = ShardBounds(max_files=7, max_bytes=200)
    plan = write_plan(listing_of(tmp_path, sizes), tmp_path / "plan.parquet", bounds)
    shards = list(iter_shards(plan.path))
    assert len(shards) == plan.shards > 60 // 7
    for _, entries in shards:
        assert 1 <= len(entries) <= 7
        assert sum(e.size for e in entries) <= 200
    assert [index for index, _ in shards] == list(range(plan.shards))
    assert plan.files == 60
    assert plan.bytes == sum(sizes.values())


def test_shards_are_filled_greedily(tmp_path: Path) -> None:
    """A shard is cut only when the next file would break a bound."""
    sizes = {"a": 40, "b": 40, "c": 30, "d": 100, "e": 1, "f": 1, "g": 1, "h": 1}
    plan = write_plan(listing_of(tmp_path, sizes), tmp_path / "plan.parquet", ShardBounds(3, 100))
    assert shards_of(plan) == [["a", "b"], ["c"], ["d"], ["e", "f", "g"], ["h"]]
    assert plan.shards == 5


def test_exact_fit_stays_in_the_shard(tmp_path: Path) -> None:
    """A shard may hold exactly max_bytes and exactly max_files."""
    sizes = {"a": 60, "b": 40, "c": 1, "d": 1, "e": 1}
    plan = write_plan(listing_of(tmp_path, sizes), tmp_path / "plan.parquet", ShardBounds(2, 100))
    assert shards_of(plan) == [["a", "b"], ["c", "d"], ["e"]]


def test_file_larger_than_max_bytes_is_alone(tmp_path: Path) -> None:
    sizes = {"a": 10, "b": 500, "c": 10, "d": 10, "e": 600}
    bounds = ShardBounds(max_files=10, max_bytes=100)
    plan = write_plan(listing_of(tmp_path, sizes), tmp_path / "plan.parquet", bounds)
    assert shards_of(plan) == [["a"], ["b"], ["c", "d"], ["e"]]


def test_first_file_larger_than_max_bytes(tmp_path: Path) -> None:
    plan = write_plan(
        listing_of(tmp_path, {"a": 500, "b": 1, "c": 1}),
        tmp_path / "plan.parquet",
        ShardBounds(10, 100),
    )
    assert shards_of(plan) == [["a"], ["b", "c"]]


def test_one_file_per_shard(tmp_path: Path) -> None:
    plan = write_plan(
        listing_of(tmp_path, {"a": 1, "b": 1, "c": 1}),
        tmp_path / "plan.parquet",
        ShardBounds(1, 100),
    )
    assert shards_of(plan) == [["a"], ["b"], ["c"]]


def test_empty_files_count_against_max_files(tmp_path: Path) -> None:
    sizes = {f"f{i}": 0 for i in range(5)}
    plan = write_plan(listing_of(tmp_path, sizes), tmp_path / "plan.parquet", ShardBounds(2, 1))
    assert [len(s) for s in shards_of(plan)] == [2, 2, 1]
    assert plan.bytes == 0


# --- coverage and order ------------------------------------------------------------------------


def test_every_eligible_file_in_exactly_one_shard_in_order(tmp_path: Path) -> None:
    files = {f"d{i % 5}/sub{i % 2}/f{i:03d}.jpg": i % 17 + 1 for i in range(90)}
    files.update({"notes.txt": 5, "d1/readme.md": 3})
    listing = listing_of(tmp_path, files, Patterns(["*.jpg"], []))
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(8, 64))
    listed = pq.read_table(listing).to_pylist()
    expected = [r["path"] for r in listed if r["skip_reason"] is None]
    flat = [path for shard in shards_of(plan) for path in shard]
    assert flat == expected
    assert len(flat) == len(set(flat)) == 90
    assert plan.files == 90


def test_skipped_rows_are_kept_without_a_shard(tmp_path: Path) -> None:
    root = make_sized_tree(tmp_path / "root", {"a.jpg": 1, "b.txt": 2, "c.jpg": 3})
    (root / "link.jpg").symlink_to(root / "a.jpg")
    listing = tmp_path / "listing.parquet"
    write_listing(root, Patterns(["*.jpg"], []), listing)
    plan = write_plan(listing, tmp_path / "plan.parquet", ROOMY)
    rows = plan_rows(plan)
    assert [(r["path"], r["shard"]) for r in rows] == [
        ("a.jpg", 0),
        ("b.txt", None),
        ("c.jpg", 0),
        ("link.jpg", None),
    ]
    listed = pq.read_table(listing).to_pylist()
    assert [{k: v for k, v in r.items() if k != "shard"} for r in rows] == listed
    assert pq.read_schema(plan.path).equals(PLAN_SCHEMA)
    assert plan == Plan(plan.path, shards=1, files=2, bytes=4)


def test_empty_listing(tmp_path: Path) -> None:
    plan = write_plan(listing_of(tmp_path, {}), tmp_path / "plan.parquet", ROOMY)
    assert plan == Plan(tmp_path / "plan.parquet", 0, 0, 0)
    assert list(iter_shards(plan.path)) == []
    assert pq.read_table(plan.path).num_rows == 0


def test_shards_span_listing_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups of the listing do not cut shards: small batches give the same plan."""
    files = {f"d{i % 3}/f{i:03d}": i % 7 + 1 for i in range(50)}
    root = make_sized_tree(tmp_path / "root", files)
    write_listing(root, ALL, tmp_path / "big.parquet")
    monkeypatch.setattr(_listing, "BATCH_ROWS", 4)
    write_listing(root, ALL, tmp_path / "small.parquet")
    assert pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups > 1
    bounds = ShardBounds(9, 1000)
    big = write_plan(tmp_path / "big.parquet", tmp_path / "plan-big.parquet", bounds)
    small = write_plan(tmp_path / "small.parquet", tmp_path / "plan-small.parquet", bounds)
    assert pq.read_table(big.path).equals(pq.read_table(small.path))
    assert list(iter_shards(big.path)) == list(iter_shards(small.path))
    assert [len(s) for s in shards_of(small)] == [9, 9, 9, 9, 9, 5]


def test_plan_is_reproducible(tmp_path: Path) -> None:
    files = {f"d{i % 4}/f{i:03d}.jpg": i + 1 for i in range(40)}
    listing = listing_of(tmp_path, files)
    bounds = ShardBounds(6, 100)
    first = write_plan(listing, tmp_path / "plan1.parquet", bounds)
    second = write_plan(listing, tmp_path / "plan2.parquet", bounds)
    assert (first.shards, first.files, first.bytes) == (second.shards, second.files, second.bytes)
    assert pq.read_table(first.path).equals(pq.read_table(second.path))
    assert first.path.read_bytes() == second.path.read_bytes()


# --- iter_shards -------------------------------------------------------------------------------


def test_iter_shards_yields_file_entries(tmp_path: Path) -> None:
    root = make_sized_tree(tmp_path / "root", {"a/x.jpg": 3, "b.jpg": 4})
    os.utime(root / "b.jpg", ns=(5, 7_000_000_000))
    listing = tmp_path / "listing.parquet"
    write_listing(root, ALL, listing)
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(1, 100))
    shards = list(iter_shards(plan.path))
    assert shards == [
        (0, (FileEntry("a/x.jpg", 3, (root / "a/x.jpg").stat().st_mtime_ns),)),
        (1, (FileEntry("b.jpg", 4, 7_000_000_000),)),
    ]


def test_iter_shards_non_utf8_name(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    root = make_sized_tree(tmp_path / "root", {"dir/" + name: 2})
    listing = tmp_path / "listing.parquet"
    write_listing(root, ALL, listing)
    plan = write_plan(listing, tmp_path / "plan.parquet", ROOMY)
    ((index, (entry,)),) = list(iter_shards(plan.path))
    assert index == 0
    assert entry.path == "dir/" + name
    assert os.fsencode(entry.path) == b"dir/caf\xe9.jpg"
    assert (root / entry.path).read_bytes() == b"xx"  # the entry opens the real file


# --- test-mode subset --------------------------------------------------------------------------


def _varied_tree(tmp_path: Path) -> Path:
    """One huge folder of 500 files and ten small folders of two files each."""
    files = {f"huge/img{i:04d}.jpg": 1 for i in range(500)}
    files.update({f"small{d:02d}/img{i}.jpg": 1 for d in range(10) for i in range(2)})
    return listing_of(tmp_path, files)


def _subset_paths(listing: Path, subset: set[int]) -> list[str]:
    paths = pq.read_table(listing, columns=["path"]).column("path").to_pylist()
    return [paths[i] for i in sorted(subset)]


def test_subset_is_round_robin_over_folders(tmp_path: Path) -> None:
    listing = _varied_tree(tmp_path)
    subset = _sharding.test_subset(listing, 15)
    paths = _subset_paths(listing, subset)
    assert len(subset) == 15
    folders = [p.split("/")[0] for p in paths]
    assert len(set(folders)) == 11
    assert folders.count("huge") <= 2
    assert all(folders.count(f"small{d:02d}") >= 1 for d in range(10))
    # every folder gives its first file before any gives its second
    assert "huge/img0000.jpg" in paths
    assert all(f"small{d:02d}/img0.jpg" in paths for d in range(10))


def test_subset_second_round_follows_listing_order(tmp_path: Path) -> None:
    listing = _varied_tree(tmp_path)
    paths = _subset_paths(listing, _sharding.test_subset(listing, 13))
    assert sorted(paths) == sorted(
        ["huge/img0000.jpg", "huge/img0001.jpg"]
        + [f"small{d:02d}/img0.jpg" for d in range(10)]
        + ["small00/img1.jpg"]
    )


def test_subset_is_deterministic(tmp_path: Path) -> None:
    listing = _varied_tree(tmp_path)
    first = _sharding.test_subset(listing, 15)
    assert all(_sharding.test_subset(listing, 15) == first for _ in range(3))
    other = tmp_path / "again"
    other.mkdir()
    assert _sharding.test_subset(_varied_tree(other), 15) == first


def test_subset_ignores_skipped_rows(tmp_path: Path) -> None:
    files = {"a/1.txt": 1, "a/2.jpg": 1, "b/3.txt": 1, "c/4.jpg": 1, "c/5.jpg": 1}
    listing = listing_of(tmp_path, files, Patterns(["*.jpg"], []))
    paths = _subset_paths(listing, _sharding.test_subset(listing, 10))
    assert paths == ["a/2.jpg", "c/4.jpg", "c/5.jpg"]
    assert _sharding.test_subset(listing, 2) == {1, 3}  # row numbers of a/2.jpg and c/4.jpg


def test_subset_folders_in_listing_order_not_byte_order(tmp_path: Path) -> None:
    """Folders take turns in the order the listing meets them ("a/x" before "a-b", and top-level
    files where they sort), not in the byte order of their names."""
    listing = listing_of(tmp_path, {"a/x/1.jpg": 1, "a-b/2.jpg": 1, "b.jpg": 1})
    assert _subset_paths(listing, _sharding.test_subset(listing, 1)) == ["a/x/1.jpg"]
    assert _subset_paths(listing, _sharding.test_subset(listing, 2)) == ["a/x/1.jpg", "a-b/2.jpg"]


def test_subset_of_empty_listing(tmp_path: Path) -> None:
    listing = listing_of(tmp_path, {"a.txt": 1}, Patterns(["*.jpg"], []))
    assert _sharding.test_subset(listing, 5) == set()


def test_subset_top_level_files_form_a_folder(tmp_path: Path) -> None:
    listing = listing_of(tmp_path, {"a.jpg": 1, "b.jpg": 1, "d/c.jpg": 1})
    assert _subset_paths(listing, _sharding.test_subset(listing, 2)) == ["a.jpg", "d/c.jpg"]


def test_plan_with_subset_skips_the_rest(tmp_path: Path) -> None:
    listing = _varied_tree(tmp_path)
    subset = _sharding.test_subset(listing, 15)
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(4, 1000), subset)
    rows = plan_rows(plan)
    chosen = [i for i, r in enumerate(rows) if r["shard"] is not None]
    assert set(chosen) == subset
    assert all(r["skip_reason"] is None for r in (rows[i] for i in chosen))
    others = [r for i, r in enumerate(rows) if i not in subset]
    assert len(others) == 520 - 15
    assert {r["skip_reason"] for r in others} == {NOT_IN_SUBSET}
    assert plan.files == 15
    assert plan.shards == 4
    flat = [p for shard in shards_of(plan) for p in shard]
    assert flat == _subset_paths(listing, subset)


def test_plan_with_subset_keeps_original_skip_reasons(tmp_path: Path) -> None:
    listing = listing_of(tmp_path, {"a.txt": 1, "b.jpg": 1, "c.jpg": 1}, Patterns(["*.jpg"], []))
    plan = write_plan(listing, tmp_path / "plan.parquet", ROOMY, subset={1})
    assert [(r["path"], r["skip_reason"], r["shard"]) for r in plan_rows(plan)] == [
        ("a.txt", "not selected by include/exclude patterns", None),
        ("b.jpg", None, 0),
        ("c.jpg", NOT_IN_SUBSET, None),
    ]


def test_plan_with_subset_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Subset row numbers count across the listing's row groups."""
    monkeypatch.setattr(_listing, "BATCH_ROWS", 3)
    listing = listing_of(tmp_path, {f"f{i:02d}": 1 for i in range(10)})
    plan = write_plan(listing, tmp_path / "plan.parquet", ROOMY, subset={0, 4, 9})
    assert shards_of(plan) == [["f00", "f04", "f09"]]


def _synthetic_listing(path: Path, rows: int) -> Path:
    """A listing too long for one read batch (65,536 rows), written without a tree."""
    names = [f"d{i // 1000:03d}/f{i:06d}" for i in range(rows)]
    table = pa.table(
        {
            "path": names,
            "path_raw": [n.encode() for n in names],
            "kind": ["file"] * rows,
            "size": [1] * rows,
            "mtime_ns": [0] * rows,
            "skip_reason": [None] * rows,
        },
        schema=_listing.LISTING_SCHEMA,
    )
    pq.write_table(table, path, row_group_size=10_000)
    return path


def test_plan_with_subset_beyond_one_read_batch(tmp_path: Path) -> None:
    """Three read batches: subset row numbers keep counting across all of them."""
    listing = _synthetic_listing(tmp_path / "listing.parquet", 140_000)
    subset = {0, 65_535, 65_536, 131_072, 139_999}
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(3, 1000), subset)
    assert shards_of(plan) == [
        ["d000/f000000", "d065/f065535", "d065/f065536"],
        ["d131/f131072", "d139/f139999"],
    ]
    assert (plan.files, plan.shards) == (5, 2)


def test_shards_beyond_one_read_batch(tmp_path: Path) -> None:
    listing = _synthetic_listing(tmp_path / "listing.parquet", 70_000)
    plan = write_plan(listing, tmp_path / "plan.parquet", ShardBounds(30_000, 1 << 30))
    assert [(i, len(entries)) for i, entries in iter_shards(plan.path)] == [
        (0, 30_000),
        (1, 30_000),
        (2, 10_000),
    ]
