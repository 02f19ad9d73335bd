"""The test-mode subset, found without listing the whole tree.

``--test-mode`` takes the files ``_sharding.test_subset`` would pick from a full listing: folders
in listing order, each giving its first file before any gives its second. A lazy, sorted,
depth-first walk finds them by name (``d_type``: no stat per file): it stops as soon as ``size``
folders have given a file, and otherwise keeps at most ``size`` names per folder. Only the chosen
files are stat'ed. On a million-file share a smoke test reads a few directories, not the tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._listing.dirscan import open_dir
from mountproc._listing.listing import LISTING_SCHEMA, ListingStats, OnSick, Patterns, display_path
from mountproc._listing.sharding import RoundRobin
from mountproc._mounts.table import SICK_ERRNOS
from mountproc._records import Kind

log = logging.getLogger(__name__)


def write_test_listing(
    root: Path, patterns: Patterns, out: Path, size: int, on_sick: OnSick
) -> ListingStats:
    """Write the listing of the test-mode subset of ``root`` (only its files) to ``out``."""
    folders: RoundRobin[str] = RoundRobin(size)
    for rel in _eligible_names(root, patterns, on_sick):
        folders.add(rel.rpartition("/")[0], rel)
        if folders.full():
            break
    rows = list(_stat_all(root, folders.pick(), on_sick))
    table = arrow.table(
        {
            "path": [display_path(rel) for rel, _ in rows],
            "path_raw": [os.fsencode(rel) for rel, _ in rows],
            "kind": [Kind.FILE.value] * len(rows),
            "size": [st.st_size for _, st in rows],
            "mtime_ns": [st.st_mtime_ns for _, st in rows],
            "skip_reason": [None] * len(rows),
        },
        LISTING_SCHEMA,
    )
    pq.write_table(table, out)
    total = sum(st.st_size for _, st in rows)
    log.info(
        "test mode: %d files from %d folders, found by reading %d names (the tree was not "
        "listed in full)",
        len(rows),
        len({rel.rpartition("/")[0] for rel, _ in rows}),
        folders.seen,
    )
    return ListingStats(len(rows), len(rows), total)


def _stat_all(
    root: Path, chosen: list[str], on_sick: OnSick
) -> Iterator[tuple[str, os.stat_result]]:
    """The chosen files with their stat (one that vanished since the walk is left out)."""
    for rel in chosen:
        try:
            yield rel, os.stat(root / rel, follow_symlinks=False)
        except OSError as exc:
            _sick(exc, on_sick)


def _eligible_names(root: Path, patterns: Patterns, on_sick: OnSick) -> Iterator[str]:
    """Relative paths of the regular files the full listing would select, in its order."""
    stack = [iter(_entries(str(root), on_sick))]
    prefixes = [""]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                if not patterns.excluded(rel):
                    stack.append(iter(_entries(entry.path, on_sick)))
                    prefixes.append(rel + "/")
            elif entry.is_file(follow_symlinks=False) and patterns.included(rel):
                yield rel
        except OSError as exc:  # d_type unknown and the stat failed: the full listing skips it
            _sick(exc, on_sick)


def _entries(path: str, on_sick: OnSick) -> list[os.DirEntry[str]]:
    """The entries of one directory in the listing's order (none if it cannot be read)."""
    opened = open_dir(path)
    if isinstance(opened, OSError):
        _sick(opened, on_sick)
        return []
    return opened


def _sick(exc: OSError, on_sick: OnSick) -> None:
    if exc.errno in SICK_ERRNOS:
        on_sick(exc)
