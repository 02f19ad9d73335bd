"""The listing of an on-demand Valohai input, made from ``inputs.json`` without a crawl: each
file's ``name`` is its path and ``size`` its size, in the order a crawl of the same tree gives
(names sorted, depth first), with the job's patterns applied as the crawl applies them; in test
mode only the subset the full listing's round-robin pick would give."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from mountproc._listing.dirscan import JUNK_REASON, Listed, Patterns, Rows
from mountproc._listing.listing import LISTING_SCHEMA, ListingStats, to_batch
from mountproc._listing.sharding import RoundRobin
from mountproc._records import Kind
from mountproc._valohai.inputs import InputFile

log = logging.getLogger(__name__)

MTIME_NS = 0
"""``inputs.json`` gives no modification time: every file's is 0."""


def crawl_order(name: str) -> tuple[str, ...]:
    """The sort key that puts paths in a crawl's order: by name within each folder, a folder's
    files where the folder's name sorts (``a/z`` before ``a.txt``)."""
    return tuple(name.split("/"))


def write_input_listing(
    files: Iterable[InputFile], patterns: Patterns, out: Path, test_size: int | None = None
) -> ListingStats:
    """Write the listing of an input's files (with ``test_size``, of the test-mode subset)."""
    rows = list(_rows(sorted(files, key=lambda f: crawl_order(f.name)), patterns))
    if test_size is not None:
        rows = _subset([r for r in rows if r.skip_reason is None], test_size)
    table = Rows()
    for row in rows:
        table.add(row)
    with pq.ParquetWriter(out, LISTING_SCHEMA) as writer:
        writer.write_batch(to_batch(table))
    chosen = [r for r in rows if r.skip_reason is None]
    stats = ListingStats(len(rows), len(chosen), sum(r.size or 0 for r in chosen))
    log.info("listed %d entries of the input: %d files to process", stats.entries, stats.eligible)
    return stats


def _rows(files: Iterable[InputFile], patterns: Patterns) -> Iterator[Listed]:
    """The crawl's rows: an excluded folder once (its files not at all), then every file."""
    skipped: str | None = None  # the excluded folder whose files are passing by
    for f in files:
        if skipped is not None and f.name.startswith(skipped + "/"):
            continue
        skipped = _excluded_folder(f.name, patterns)
        if skipped is not None:
            why = JUNK_REASON if patterns.junk(skipped) else "directory excluded by pattern"
            yield Listed(skipped, Kind.DIRECTORY, skip_reason=why)
        elif patterns.included(f.name):
            yield Listed(f.name, Kind.FILE, f.size, MTIME_NS)
        else:
            why = (
                JUNK_REASON if patterns.junk(f.name) else "not selected by include/exclude patterns"
            )
            yield Listed(f.name, Kind.FILE, skip_reason=why)


def _excluded_folder(name: str, patterns: Patterns) -> str | None:
    """The outermost folder of ``name`` that an exclude pattern matches, or None."""
    parts = name.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        folder = "/".join(parts[:depth])
        if patterns.excluded(folder):
            return folder
    return None


def _subset(rows: list[Listed], size: int) -> list[Listed]:
    """The test-mode pick of the listing's files: round-robin over their folders."""
    folders: RoundRobin[Listed] = RoundRobin(size)
    for row in rows:
        folders.add(row.path.rpartition("/")[0], row)
        if folders.full():
            break
    return folders.pick()
