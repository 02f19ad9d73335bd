"""Deterministic shards from a listing, and the test-mode subset that shows the tree's variety.

Shards are consecutive runs of the sorted listing, cut by file count and bytes, so the same tree
and bounds always give the same shards whatever the cluster looks like.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._listing.listing import LISTING_SCHEMA
from mountproc._records import FileEntry

PLAN_SCHEMA = LISTING_SCHEMA.append(pa.field("shard", pa.int32()))
NOT_IN_SUBSET = "not in the test-mode subset"
T = TypeVar("T")


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
    # the most files and the most bytes of any shard (0 when not known: a resumed run's plan)
    largest_files: int = field(default=0, compare=False)
    largest_bytes: int = field(default=0, compare=False)


def batches(path: Path, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's record batches, in order, in bounded memory: without ``pre_buffer``,
    which keeps the row groups it has read (all 117 MB of a 10,000,000-file listing by its
    end) until the file is closed, and in this thread (decoding threads each grow an
    allocator arena: sharding 10,000,000 files peaked 38 MB higher with them, and was slower)."""
    file = pq.ParquetFile(path, pre_buffer=False)
    yield from file.iter_batches(columns=columns, use_threads=False)


class _Cutter:
    """Assigns consecutive files to shards within the bounds, noting the largest shard."""

    def __init__(self, bounds: ShardBounds) -> None:
        self.bounds = bounds
        self.shard = -1
        self.files = 0
        self.bytes = 0
        self.most_files = 0
        self.most_bytes = 0

    def cut(self, sizes: np.ndarray) -> np.ndarray:
        """The shards of the next files, of these sizes: a file opens a new shard when the
        current one is full (files, or bytes with it), unless the current one is empty. One
        step per shard: the files of a shard are found with a binary search of the sums."""
        shards = np.empty(len(sizes), dtype=np.int32)
        ends = np.cumsum(sizes, dtype=np.int64)  # bytes of sizes[: i + 1]
        start = 0
        while start < len(sizes):
            if self.shard < 0:
                self.shard = 0
            base = int(ends[start - 1]) if start else 0
            fit = int(np.searchsorted(ends, base + self.bounds.max_bytes - self.bytes, "right"))
            take = min(self.bounds.max_files - self.files, fit - start, len(sizes) - start)
            if self.files == 0:
                take = max(take, 1)  # a file larger than max_bytes gets a shard alone
            if take <= 0:
                self.shard, self.files, self.bytes = self.shard + 1, 0, 0
                continue
            shards[start : start + take] = self.shard
            self.files += take
            self.bytes += int(ends[start + take - 1]) - base
            self.most_files = max(self.most_files, self.files)
            self.most_bytes = max(self.most_bytes, self.bytes)
            start += take
        return shards

    def plan(self, path: Path, files: int, total: int) -> Plan:
        """The totals of the shards cut so far."""
        return Plan(path, self.shard + 1, files, total, self.most_files, self.most_bytes)


class RoundRobin(Generic[T]):
    """Items by folder, folders in the order first seen, at most ``size`` items each; ``pick``
    takes ``size`` of them round-robin: every folder's first before any folder's second."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.folders: dict[Hashable, list[tuple[int, T]]] = {}
        self.seen = 0

    def add(self, folder: Hashable, item: T) -> None:
        """Note the next item of the listing, in listing order."""
        self.seen += 1
        items = self.folders.setdefault(folder, [])
        if len(items) < self.size:
            items.append((self.seen, item))

    def full(self) -> bool:
        """``size`` folders gave a first item: later items cannot be picked."""
        return len(self.folders) >= self.size

    def pick(self) -> list[T]:
        """The round-robin pick, in listing order."""
        chosen: list[tuple[int, T]] = []
        depth = 0
        while len(chosen) < self.size:
            layer = [items[depth] for items in self.folders.values() if len(items) > depth]
            if not layer:
                break
            chosen += layer[: self.size - len(chosen)]
            depth += 1
        return [item for _, item in sorted(chosen, key=lambda pair: pair[0])]


def test_subset(listing: Path, size: int) -> set[int]:
    """Row numbers of up to ``size`` files, taken round-robin over directories in listing order:
    every directory gives its first file before any gives its second (streamed: memory is
    bounded by ``size`` rows per directory, not by the listing)."""
    picker: RoundRobin[int] = RoundRobin(size)
    row = 0
    columns = ["path_raw", "skip_reason"]
    for batch in batches(listing, columns):
        cols = batch.to_pydict()
        for raw, reason in zip(cols["path_raw"], cols["skip_reason"], strict=True):
            if reason is None:
                picker.add(raw.rpartition(b"/")[0], row)
                if picker.full():
                    return set(picker.pick())
            row += 1
    return set(picker.pick())


def write_plan(
    listing: Path, out: Path, bounds: ShardBounds, subset: set[int] | None = None
) -> Plan:
    """Copy the listing to ``out`` with a ``shard`` column; with a subset, the other eligible
    files become ``skipped`` rows. Batch by batch, in Arrow and numpy: no row becomes a
    Python object."""
    cutter = _Cutter(bounds)
    files = total = row = 0
    with pq.ParquetWriter(out, PLAN_SCHEMA) as writer:
        for batch in batches(listing):
            chosen, reasons = _chosen(batch, row, subset)
            sizes = arrow.int64_view(pc.filter(batch.column("size"), chosen))
            flags = arrow.bools_view(chosen)
            shards = np.zeros(batch.num_rows, dtype=np.int32)
            shards[flags] = cutter.cut(sizes)
            files, total, row = files + len(sizes), total + int(sizes.sum()), row + batch.num_rows
            cols = {name: batch.column(name) for name in LISTING_SCHEMA.names}
            cols["skip_reason"] = reasons
            cols["shard"] = arrow.int32s(shards, flags)
            arrays = [cols[name] for name in PLAN_SCHEMA.names]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=PLAN_SCHEMA))
    pa.default_memory_pool().release_unused()
    return cutter.plan(out, files, total)


def _chosen(batch: pa.RecordBatch, row: int, subset: set[int] | None) -> tuple[pa.Array, pa.Array]:
    """Which rows of a batch (its first is row ``row`` of the listing) go into shards, and the
    batch's skip reasons (a subset's other eligible files: ``NOT_IN_SUBSET``)."""
    reasons = batch.column("skip_reason")
    eligible = pc.is_null(reasons)
    if subset is None:
        return eligible, reasons
    picked = np.zeros(batch.num_rows, dtype=bool)
    picked[[i - row for i in subset if row <= i < row + batch.num_rows]] = True
    chosen = pc.and_(eligible, arrow.bools(picked))
    left_out = pc.and_(eligible, pc.invert(chosen))
    return chosen, pc.if_else(left_out, arrow.scalar(NOT_IN_SUBSET, pa.string()), reasons)


def subset_entries(listing: Path, subset: set[int]) -> list[FileEntry]:
    """The files at row numbers ``subset`` of a listing, in listing order (read in bounded
    batches: only the subset's rows become Python objects)."""
    found: list[FileEntry] = []
    row = 0
    columns = ["path_raw", "size", "mtime_ns"]
    for batch in batches(listing, columns):
        here = sorted(i - row for i in subset if row <= i < row + batch.num_rows)
        cols = batch.take(arrow.array(here, pa.int64())).to_pydict() if here else None
        row += batch.num_rows
        if cols is None:
            continue
        for raw, size, mtime in zip(cols["path_raw"], cols["size"], cols["mtime_ns"], strict=True):
            found.append(FileEntry(os.fsdecode(raw), size, mtime))
    return found


def subset_plan(listing: Path, subset: set[int], bounds: ShardBounds) -> Plan:
    """The totals ``write_plan(listing, ..., bounds, subset)`` would give, written nowhere
    (``path`` is the listing's)."""
    cutter = _Cutter(bounds)
    sizes = [entry.size for entry in subset_entries(listing, subset)]
    cutter.cut(np.array(sizes, dtype=np.int64))  # a list: no pandas
    return cutter.plan(listing, len(sizes), sum(sizes))


def iter_shards(plan: Path) -> Iterator[tuple[int, tuple[FileEntry, ...]]]:
    """Yield ``(shard index, entries)`` in order, reading the plan in bounded batches."""
    current: list[FileEntry] = []
    index = -1
    columns = ["path_raw", "size", "mtime_ns", "shard"]
    for batch in batches(plan, columns):
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
