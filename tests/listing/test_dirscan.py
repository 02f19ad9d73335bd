"""Tests of _listing.dirscan's quick way (names, ``lstat`` relative to the directory, classes by
mode), which the serial crawl takes: always what the general way, from ``DirEntry``, makes."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mountproc._listing import dirscan as _dirscan
from mountproc._listing import listing as _listing
from mountproc._listing.dirscan import (
    Patterns,
    classify_stats,
    open_dir,
    scan,
)
from mountproc._listing.listing import crawl, read_names, stat_names

NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")
PATTERNS = [
    Patterns([], []),
    Patterns(["*"], ["._*", ".DS_Store"], ["Thumbs.db"]),
    Patterns(["*.jpg"], ["cache", "*.tmp"]),
    Patterns(["*.JPG", "sub/*"], ["d/*"]),  # patterns with a slash: matched by relative path
]


def make_mixed(root: Path) -> Path:
    """Every kind of entry a directory can hold, files of every pattern between them."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ["a.jpg", "b.txt", "c.tmp", "._d.jpg", "Thumbs.db", "E.JPG", NON_UTF8, "z\n.jpg"]:
        (root / name).write_bytes(name.encode("utf-8", "surrogateescape"))
    for name in ["cache", "d", "sub", "x.jpg.d"]:
        (root / name).mkdir()
        (root / name / "in.jpg").write_bytes(b"in")
    (root / "link.jpg").symlink_to(root / "a.jpg")
    (root / "dirlink").symlink_to(root / "d", target_is_directory=True)
    (root / "gone.jpg").symlink_to(root / "nowhere")
    os.mkfifo(root / "pipe.jpg")
    return root


def general(path: Path, prefix: str, patterns: Patterns) -> list[_dirscan.ScanItem]:
    entries = open_dir(str(path))
    assert not isinstance(entries, OSError)
    return scan(entries, prefix, patterns)


def quick(path: Path, prefix: str, patterns: Patterns) -> list[_dirscan.ScanItem]:
    names = read_names(str(path))
    assert not isinstance(names, OSError)
    stats = stat_names(str(path), names)
    assert stats is not None
    return classify_stats(str(path), names, stats, prefix, patterns)


@pytest.mark.parametrize("patterns", PATTERNS)
@pytest.mark.parametrize("prefix", ["", "sub/", "d/"])
def test_the_quick_way_makes_what_the_general_way_makes(
    tmp_path: Path, patterns: Patterns, prefix: str
) -> None:
    root = make_mixed(tmp_path / "root")
    assert quick(root, prefix, patterns) == general(root, prefix, patterns)


def test_the_quick_way_makes_rows_of_every_kind(tmp_path: Path) -> None:
    """The comparison above means something: rows, subdirectories, skipped rows of each kind."""
    items = quick(make_mixed(tmp_path / "root"), "", PATTERNS[2])
    subdirs = [i.rel for i in items if isinstance(i, _dirscan.Subdir)]
    assert subdirs == ["d", "sub", "x.jpg.d"]
    rows = [row for i in items if isinstance(i, _dirscan.Rows) for row in i.listed()]
    reasons = {row.path: row.skip_reason for row in rows}
    assert reasons["a.jpg"] is None
    assert reasons[NON_UTF8] is None
    assert reasons["b.txt"] == "not selected by include/exclude patterns"
    assert reasons["cache"] == "directory excluded by pattern"
    assert reasons["link.jpg"] == reasons["dirlink"] == "symlink (never followed)"
    assert reasons["pipe.jpg"] == "not a regular file (fifo)"


def test_a_name_that_cannot_be_stated_gives_none(tmp_path: Path) -> None:
    root = make_mixed(tmp_path / "root")
    names = read_names(str(root))
    assert not isinstance(names, OSError)
    assert stat_names(str(root), names) is not None
    (root / "b.txt").unlink()  # gone between reading the names and stat'ing them
    assert stat_names(str(root), names) is None
    assert isinstance(read_names(str(tmp_path / "missing")), FileNotFoundError)


@pytest.mark.parametrize("slice_size", [1, 3, 5000])
def test_an_entry_removed_during_the_crawl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_size: int
) -> None:
    """A file removed between the reading of the names and their ``lstat`` (another writer): from
    that slice on, the directory is listed again the general way, and the rows are those of the
    tree as it is then, in order."""
    root = make_mixed(tmp_path / "root")
    real: Callable[[str], list[str] | OSError] = read_names

    def then_remove(path: str) -> list[str] | OSError:
        names = real(path)
        if path == str(root):
            (root / "b.txt").unlink()
        return names

    monkeypatch.setattr(_listing, "read_names", then_remove)
    monkeypatch.setattr(_listing, "SLICE", slice_size)
    patterns = PATTERNS[2]
    rows = list(crawl(root, patterns))
    monkeypatch.undo()
    with ThreadPoolExecutor(1) as pool:  # the general way throughout
        assert rows == list(crawl(root, patterns, executor=pool))
    assert "b.txt" not in [row.path for row in rows]
    assert len(rows) == 15  # 7 files, 4 rows from the directories, 4 other entries


NAMES = st.text(st.sampled_from("aAkK\u212asS\u017f.*?[]!_-/é\udce9"), min_size=1, max_size=6)
"""Names and globs: with the letters that match others case-insensitively (the Kelvin sign, the
long s), undecodable bytes, and every character a glob gives a meaning."""


@settings(max_examples=400, deadline=None)
@given(
    include=st.lists(NAMES, max_size=3),
    exclude=st.lists(NAMES, max_size=3),
    prefix=st.sampled_from(["", "a/", "A/b/"]),
    names=st.lists(NAMES.filter(lambda n: "/" not in n), max_size=8).map(sorted),
)
def test_rejected_is_what_included_rejects(
    include: list[str], exclude: list[str], prefix: str, names: list[str]
) -> None:
    patterns = Patterns(include, exclude, ["._*"])
    expected = {name for name in names if not patterns.included(prefix + name)}
    assert patterns.rejected(prefix, names) == expected
