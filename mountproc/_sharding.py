"""Deterministic shards from a listing, and the test-mode subset that shows the tree's variety.

Shards are consecutive runs of the sorted listing, cut by file count and bytes, so the same tree
and bounds always give the same shards whatever the cluster looks like.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mountproc._listing import LISTING_SCHEMA
from mountproc._records import FileEntry

PLAN_SCHEMA = LISTING_SCHEMA.append(pa.field("shard", pa.int32()))
NOT_IN_SUBSET = "not in the test-mode subset"


@dataclass(frozen=True)
class ShardBounds:
    """Upper bounds of one shard; a single file larger than ``max_bytes`` gets a shard alone."""

    max_files: int
    max_bytes: int


@dataclass(frozen=True)
class Plan:
    """The sharded listing on disk, with its totals."""

    path: Path
    shards: int
    files: int
    bytes: int


class _Cutter:
    """Assigns consecutive files to shards within the bounds."""

    def __init__(self, bounds: ShardBounds) -> None:
        self.bounds = bounds
        self.shard = -1
        self.files = 0
        self.bytes = 0

    def assign(self, size: int) -> int:
        full = self.files >= self.bounds.max_files or self.bytes + size > self.bounds.max_bytes
        if self.shard < 0 or (full and self.files > 0):
            self.shard, self.files, self.bytes = self.shard + 1, 0, 0
        self.files += 1
        self.bytes += size
        return self.shard


def test_subset(listing: Path, size: int) -> set[int]:
    """Row numbers of up to ``size`` files, taken round-robin over directories in listing order:
    every directory gives its first file before any gives its second."""
    table = pq.read_table(listing, columns=["path_raw", "skip_reason"])
    frame = table.to_pandas()
    frame = frame[frame["skip_reason"].isna()]
    if frame.empty:
        return set()
    parent = frame["path_raw"].map(lambda raw: raw.rpartition(b"/")[0])
    dir_order = pd.Series(pd.factorize(parent, sort=False)[0], index=frame.index)
    rank = parent.groupby(parent, sort=False).cumcount()
    order = pd.DataFrame({"rank": rank, "dir": dir_order}).sort_values(
        ["rank", "dir"], kind="stable"
    )
    return {int(i) for i in order.index[:size]}


def write_plan(
    listing: Path, out: Path, bounds: ShardBounds, subset: set[int] | None = None
) -> Plan:
    """Copy the listing to ``out`` with a ``shard`` column; with a subset, the other eligible
    files become ``skipped`` rows."""
    cutter = _Cutter(bounds)
    files = total = row = 0
    with pq.ParquetWriter(out, PLAN_SCHEMA) as writer:
        for batch in pq.ParquetFile(listing).iter_batches():
            cols = batch.to_pydict()
            reasons: list[str | None] = cols["skip_reason"]
            shards: list[int | None] = []
            for i, size in enumerate(cols["size"]):
                if reasons[i] is None and subset is not None and row + i not in subset:
                    reasons[i] = NOT_IN_SUBSET
                if reasons[i] is None:
                    shards.append(cutter.assign(size))
                    files, total = files + 1, total + size
                else:
                    shards.append(None)
            row += len(shards)
            cols["shard"] = shards
            writer.write_batch(pa.RecordBatch.from_pydict(cols, schema=PLAN_SCHEMA))
    return Plan(out, cutter.shard + 1, files, total)


def iter_shards(plan: Path) -> Iterator[tuple[int, tuple[FileEntry, ...]]]:
    """Yield ``(shard index, entries)`` in order, reading the plan in bounded batches."""
    current: list[FileEntry] = []
    index = -1
    columns = ["path_raw", "size", "mtime_ns", "shard"]
    for batch in pq.ParquetFile(plan).iter_batches(columns=columns):
        cols = batch.to_pydict()
        for raw, size, mtime, shard in zip(
            cols["path_raw"], cols["size"], cols["mtime_ns"], cols["shard"], strict=True
        ):
            if shard is None:
                continue
            if shard != index and current:
                yield index, tuple(current)
                current = []
            index = shard
            current.append(FileEntry(os.fsdecode(raw), size, mtime))
    if current:
        yield index, tuple(current)
