"""Tests of ``_listing.inputs``: an on-demand input's listing, made from its files' names and
sizes, is the listing a crawl of the same tree gives (order, patterns, test-mode pick)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mountproc._listing.dirscan import Patterns
from mountproc._listing.inputs import write_input_listing
from mountproc._listing.listing import write_listing
from mountproc._listing.testmode import write_test_listing
from mountproc._valohai.inputs import InputFile

# names whose order trips a plain string sort: "a/z" must come before "a.txt" and "a-b"
NAMES = [
    "a.txt", "a-b/x.jpg", "a/z.jpg", "a/b/c.jpg", "a/B.JPG", "A.jpg", "b/tmp/x.jpg", "b/y.jpg",
    "b/.DS_Store", "c/d/e/f.png", "c/d.jpg", "zz.jpg", "a/b/a.jpg", "tmp/q.jpg", "c/notes.md",
]  # fmt: skip
PATTERNS = [
    Patterns(["*"], []),
    Patterns(["*.jpg"], ["tmp"], [".DS_Store"]),
    Patterns(["*.jpg", "*.png"], ["c/d"]),
]


def _tree(root: Path, names: list[str]) -> list[InputFile]:
    files = []
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (10 + i))
        os.utime(path, ns=(0, 0))
        files.append(InputFile(name, 10 + i, f"https://store/{name}", f"datum://{i}"))
    return files


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]


@pytest.mark.parametrize("patterns", PATTERNS)
def test_the_listing_is_the_crawls_of_the_same_tree(tmp_path: Path, patterns: Patterns) -> None:
    files = _tree(tmp_path / "tree", NAMES)
    random.Random(7).shuffle(files)  # inputs.json's order is the data store's
    crawled, listed = tmp_path / "crawled.parquet", tmp_path / "listed.parquet"
    write_listing(tmp_path / "tree", patterns, crawled)
    stats = write_input_listing(files, patterns, listed)
    assert _rows(listed) == _rows(crawled)
    assert stats.eligible == sum(1 for r in _rows(crawled) if r["skip_reason"] is None)


@pytest.mark.parametrize("size", [1, 3, 5, 40])
def test_the_test_mode_pick_is_the_crawls(tmp_path: Path, size: int) -> None:
    files = _tree(tmp_path / "tree", NAMES)
    patterns = Patterns(["*.jpg", "*.png"], ["tmp"])
    crawled, listed = tmp_path / "crawled.parquet", tmp_path / "listed.parquet"
    write_test_listing(tmp_path / "tree", patterns, crawled, size, lambda exc: None)
    write_input_listing(files, patterns, listed, test_size=size)
    assert [r["path"] for r in _rows(listed)] == [r["path"] for r in _rows(crawled)]
    assert len(_rows(listed)) == min(size, 10)  # a/B.JPG too: patterns ignore case
