"""Tests of _listing.listing: the sorted, streaming crawl of a source tree into Parquet."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mountproc._listing import dirscan as _dirscan
from mountproc._listing import listing as _listing
from mountproc._listing.listing import (
    LISTING_SCHEMA,
    Listed,
    ListingStats,
    Patterns,
    crawl,
    display_path,
    write_listing,
)
from mountproc._records import Kind

ALL = Patterns(["*"], [])
NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create ``files`` (relative path -> content) under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    root.mkdir(parents=True, exist_ok=True)
    return root


def listed(root: Path, patterns: Patterns = ALL) -> list[Listed]:
    return list(crawl(root, patterns))


def by_path(rows: list[Listed]) -> dict[str, Listed]:
    return {row.path: row for row in rows}


def eligible(rows: list[Listed]) -> list[str]:
    return [row.path for row in rows if row.skip_reason is None]


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


# --- order -------------------------------------------------------------------------------------


def test_sorted_depth_first(tmp_path: Path) -> None:
    """Siblings come in name order and a directory's contents come where its name sorts."""
    make_tree(tmp_path, {"a.d": b"3", "a-c": b"2", "a/b": b"1", "z/y/x": b"4", "0": b"0"})
    assert [row.path for row in listed(tmp_path)] == ["0", "a/b", "a-c", "a.d", "z/y/x"]


def test_order_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = [f"f{i:03d}" for i in range(50)]
    make_tree(tmp_path / "fwd", {n: b"" for n in names})
    make_tree(tmp_path / "rev", {n: b"" for n in reversed(names)})
    assert [r.path for r in listed(tmp_path / "fwd")] == names
    assert [r.path for r in listed(tmp_path / "rev")] == names


def test_file_rows_carry_size_and_mtime(tmp_path: Path) -> None:
    make_tree(tmp_path, {"d/one.bin": b"12345"})
    os.utime(tmp_path / "d" / "one.bin", ns=(1_000_000_123, 2_000_000_456))
    (row,) = listed(tmp_path)
    assert row == Listed("d/one.bin", Kind.FILE, 5, 2_000_000_456, None)


# --- symlinks and special files ----------------------------------------------------------------


def test_symlink_to_outside_file_is_skipped(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"secret.jpg": b"secret"})
    root = make_tree(tmp_path / "root", {"real.jpg": b"x"})
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    rows = by_path(listed(root))
    assert set(rows) == {"link.jpg", "real.jpg"}
    assert rows["link.jpg"].kind is Kind.SYMLINK
    assert rows["link.jpg"].skip_reason == "symlink (never followed)"
    assert rows["link.jpg"].size is None
    assert eligible(list(rows.values())) == ["real.jpg"]


def test_symlink_to_directory_is_not_followed(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"a.jpg": b"a", "sub/b.jpg": b"b"})
    root = make_tree(tmp_path / "root", {"real.jpg": b"x"})
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    rows = listed(root)
    assert [(r.path, r.kind) for r in rows] == [
        ("dirlink", Kind.SYMLINK),
        ("loop", Kind.SYMLINK),
        ("real.jpg", Kind.FILE),
    ]
    assert not any(r.path.startswith(("dirlink/", "loop/")) for r in rows)


def test_dangling_symlink_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (row,) = listed(tmp_path)
    assert (row.kind, row.skip_reason) == (Kind.SYMLINK, "symlink (never followed)")


@pytest.mark.timeout(10)
def test_fifo_is_skipped_without_opening(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the crawl must not open it."""
    make_tree(tmp_path, {"a.jpg": b"a"})
    os.mkfifo(tmp_path / "pipe.jpg")
    stats = write_listing(tmp_path, ALL, tmp_path.parent / "listing.parquet")
    rows = {r["path"]: r for r in read_rows(tmp_path.parent / "listing.parquet")}
    assert rows["pipe.jpg"]["kind"] == "fifo"
    assert rows["pipe.jpg"]["skip_reason"] == "not a regular file (fifo)"
    assert rows["pipe.jpg"]["size"] is None
    assert stats == ListingStats(entries=2, eligible=1, eligible_bytes=1)


def test_socket_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    if len(os.fsencode(path)) >= 100:  # AF_UNIX paths are limited to ~108 bytes
        pytest.skip("tmp_path too long for an AF_UNIX socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        (row,) = listed(tmp_path)
    assert (row.path, row.kind) == ("s.sock", Kind.SOCKET)
    assert row.skip_reason == "not a regular file (socket)"


def test_device_is_skipped(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    (row,) = listed(tmp_path)
    assert (row.path, row.kind) == ("null", Kind.DEVICE)
    assert row.skip_reason == "not a regular file (device)"


# --- names -------------------------------------------------------------------------------------


def test_non_utf8_name_is_listed(tmp_path: Path) -> None:
    make_tree(tmp_path, {NON_UTF8: b"jpeg", "plain.jpg": b"p"})
    rows = listed(tmp_path, Patterns(["*.jpg"], []))
    assert eligible(rows) == sorted([NON_UTF8, "plain.jpg"])
    assert os.fsencode(by_path(rows)[NON_UTF8].path) == b"caf\xe9.jpg"


def test_non_utf8_name_in_parquet(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root", {"dir/" + NON_UTF8: b"jpeg"})
    out = tmp_path / "listing.parquet"
    write_listing(root, ALL, out)
    (row,) = read_rows(out)
    assert row["path_raw"] == b"dir/caf\xe9.jpg"
    assert row["path"] == "dir/caf\\xe9.jpg"
    row["path"].encode("utf-8")  # strict: no lone surrogates
    assert row["kind"] == "file"
    assert row["size"] == 4


def test_a_batch_with_one_non_utf8_name_renders_every_name(tmp_path: Path) -> None:
    """One undecodable name sends its whole batch the slow way: the other rows are unchanged."""
    names = ["a.jpg", "café.jpg", NON_UTF8, "z\n.jpg"]
    root = make_tree(tmp_path / "root", {n: b"x" for n in names})
    out = tmp_path / "listing.parquet"
    write_listing(root, ALL, out)
    rows = read_rows(out)
    assert [r["path_raw"] for r in rows] == sorted(os.fsencode(n) for n in names)
    assert [r["path"] for r in rows] == [display_path(os.fsdecode(r["path_raw"])) for r in rows]
    assert "café.jpg" in [r["path"] for r in rows]


def test_display_path() -> None:
    assert display_path(NON_UTF8) == "caf\\xe9.jpg"
    assert display_path("café.jpg") == "café.jpg"
    assert display_path("a/b c\n.jpg") == "a/b c\n.jpg"


def test_names_with_newline_and_spaces(tmp_path: Path) -> None:
    names = ["line\nbreak.jpg", "two  spaces .jpg", " lead.jpg", "tab\t.jpg"]
    root = make_tree(tmp_path / "root", {n: n.encode() for n in names})
    out = tmp_path / "listing.parquet"
    stats = write_listing(root, Patterns(["*.jpg"], []), out)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == sorted(names)
    assert [r["path_raw"] for r in rows] == [n.encode() for n in sorted(names)]
    assert [r["size"] for r in rows] == [len(n.encode()) for n in sorted(names)]
    assert stats.eligible == 4


# --- patterns ----------------------------------------------------------------------------------


def test_include_is_case_insensitive(tmp_path: Path) -> None:
    make_tree(tmp_path, {"IMG.JPG": b"", "b.Jpg": b"", "c.png": b"", "d.jpeg": b""})
    rows = by_path(listed(tmp_path, Patterns(["*.jpg"], [])))
    assert eligible(list(rows.values())) == ["IMG.JPG", "b.Jpg"]
    assert rows["c.png"].kind is Kind.FILE
    assert rows["c.png"].skip_reason == "not selected by include/exclude patterns"
    assert rows["c.png"].size is None


def test_several_include_patterns(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.jpg": b"", "b.png": b"", "c.gif": b""})
    assert eligible(listed(tmp_path, Patterns(["*.jpg", "*.PNG"], []))) == ["a.jpg", "b.png"]


def test_exclude_by_name(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.jpg": b"", "sub/thumb_b.jpg": b"", "sub/c.jpg": b"", ".DS_Store": b""})
    rows = listed(tmp_path, Patterns(["*"], ["THUMB_*", ".ds_store"]))
    assert eligible(rows) == ["a.jpg", "sub/c.jpg"]
    assert by_path(rows)["sub/thumb_b.jpg"].skip_reason == (
        "not selected by include/exclude patterns"
    )


def test_exclude_by_path_pattern(tmp_path: Path) -> None:
    make_tree(tmp_path, {"raw/a.jpg": b"", "keep/raw/b.jpg": b"", "c.jpg": b""})
    rows = listed(tmp_path, Patterns(["*.jpg"], ["raw/*.jpg"]))
    assert eligible(rows) == ["c.jpg", "keep/raw/b.jpg"]
    assert [r.path for r in rows] == ["c.jpg", "keep/raw/b.jpg", "raw/a.jpg"]


def test_include_by_path_pattern(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cam1/a.jpg": b"", "cam2/b.jpg": b"", "c.jpg": b""})
    assert eligible(listed(tmp_path, Patterns(["CAM1/*"], []))) == ["cam1/a.jpg"]


def test_excluded_directory_is_pruned(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.jpg": b"", "cache/x.jpg": b"", "cache/deep/y.jpg": b"", "z.jpg": b""})
    for patterns in (Patterns(["*"], ["cache"]), Patterns(["*"], ["/CACHE/"])):
        rows = listed(tmp_path, patterns)
        assert [(r.path, r.kind) for r in rows] == [
            ("a.jpg", Kind.FILE),
            ("cache", Kind.DIRECTORY),
            ("z.jpg", Kind.FILE),
        ]
        assert rows[1].skip_reason == "directory excluded by pattern"


READERS = ("scandir", "listdir", "open")
"""What may open a directory: the general way lists by ``os.scandir``, the serial crawl's quick
way by ``os.listdir``, then opens it to ``lstat`` names relative to it."""


@pytest.mark.parametrize("threads", [0, 2])
def test_excluded_directory_is_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    make_tree(tmp_path, {"a.jpg": b"", "cache/x.jpg": b"", "keep/y.jpg": b""})
    opened: list[str] = []
    for name in READERS:
        real = getattr(os, name)

        def spy(path: Any, *args: Any, real: Any = real, **kwargs: Any) -> Any:
            opened.append(os.fsdecode(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    with ThreadPoolExecutor(threads) if threads else contextlib.nullcontext() as pool:
        rows = list(crawl(tmp_path, Patterns(["*"], ["cache"]), executor=pool))
    assert [r.path for r in rows] == ["a.jpg", "cache", "keep/y.jpg"]
    assert str(tmp_path / "keep") in opened
    assert not [path for path in opened if "cache" in path]


def test_patterns_api() -> None:
    patterns = Patterns(["*.jpg"], ["bad/*", "tmp*"])
    assert patterns.included("x/A.JPG")
    assert not patterns.included("x/a.png")
    assert not patterns.included("bad/a.jpg")
    assert not patterns.included("x/tmp1.jpg")
    assert patterns.excluded("tmp")
    assert not patterns.excluded("x/a.jpg")
    no_patterns = Patterns([], [])
    assert no_patterns.included("anything")
    assert not no_patterns.excluded("anything")


def test_selects_all() -> None:
    """Only then may the crawl skip matching file names."""
    assert Patterns([], []).selects_all
    assert Patterns(["*"], []).selects_all
    assert Patterns(["*.jpg", "*"], []).selects_all
    assert not Patterns(["*.jpg"], []).selects_all
    assert not Patterns(["*"], ["cache"]).selects_all
    assert not Patterns([], ["*.tmp"]).selects_all


@pytest.mark.parametrize(
    "patterns", [ALL, Patterns(["?*"], []), Patterns(["*.jpg"], ["cache", "*.tmp"])]
)
def test_the_quick_way_for_files_agrees_with_the_general_one(
    tmp_path: Path, patterns: Patterns
) -> None:
    """``scan`` makes a selected regular file's row itself, without ``entry_items``; for every
    kind of entry, what it gives is what the general classification gives."""
    make_tree(
        tmp_path, {"a.jpg": b"aa", "b.txt": b"b", "c.tmp": b"", "cache/x.jpg": b"", "d/e": b""}
    )
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "dirlink").symlink_to(tmp_path / "d", target_is_directory=True)
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    entries = _dirscan.open_dir(str(tmp_path))
    assert not isinstance(entries, OSError)
    for entry in entries:
        general = _dirscan.pack(_dirscan.entry_items(entry, entry.name, patterns))
        assert _dirscan.scan([entry], "", patterns) == general, entry.name
    assert len(_dirscan.scan(entries, "", patterns)) > 1  # rows, then subdirectories


# --- unreadable --------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
def test_unreadable_directory(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.jpg": b"", "locked/x.jpg": b"", "z.jpg": b""})
    (tmp_path / "locked").chmod(0)
    try:
        rows = listed(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [r.path for r in rows] == ["a.jpg", "locked", "z.jpg"]
    assert rows[1].kind is Kind.UNREADABLE
    assert rows[1].skip_reason == "cannot list directory: Permission denied"


@pytest.mark.parametrize("threads", [0, 2])
def test_unlistable_directory_becomes_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Simulated with a failing scandir and listdir, so it runs as root too."""
    make_tree(tmp_path, {"a.jpg": b"", "locked/x.jpg": b"", "z.jpg": b""})
    for name in ("scandir", "listdir"):
        real = getattr(os, name)

        def failing(path: Any, real: Any = real) -> Any:
            if os.fsdecode(path).endswith("locked"):
                raise PermissionError(13, "Permission denied")
            return real(path)

        monkeypatch.setattr(os, name, failing)
    with ThreadPoolExecutor(threads) if threads else contextlib.nullcontext() as pool:
        rows = list(crawl(tmp_path, ALL, executor=pool))
    assert [(r.path, r.kind) for r in rows] == [
        ("a.jpg", Kind.FILE),
        ("locked", Kind.UNREADABLE),
        ("z.jpg", Kind.FILE),
    ]
    assert rows[1].skip_reason == "cannot list directory: Permission denied"


def test_missing_root_is_one_unreadable_row(tmp_path: Path) -> None:
    out = tmp_path / "listing.parquet"
    stats = write_listing(tmp_path / "missing", ALL, out)
    (row,) = read_rows(out)
    assert (row["path"], row["kind"]) == (".", "unreadable")
    assert row["skip_reason"] == "cannot list directory: No such file or directory"
    assert stats == ListingStats(1, 0, 0)


# --- write_listing -----------------------------------------------------------------------------


def test_empty_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root", {})
    out = tmp_path / "listing.parquet"
    assert write_listing(root, ALL, out) == ListingStats(0, 0, 0)
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.schema.equals(LISTING_SCHEMA)


def test_listing_columns_and_stats(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "root",
        {"a/1.jpg": b"11", "a/2.txt": b"222", "b/3.jpg": b"3333", "skip/4.jpg": b"4"},
    )
    (root / "link.jpg").symlink_to(root / "a" / "1.jpg")
    out = tmp_path / "listing.parquet"
    stats = write_listing(root, Patterns(["*.jpg"], ["skip"]), out)
    table = pq.read_table(out)
    assert table.schema.equals(LISTING_SCHEMA)
    assert table.to_pylist() == [
        _row("a/1.jpg", "file", 2, root / "a/1.jpg"),
        _row("a/2.txt", "file", reason="not selected by include/exclude patterns"),
        _row("b/3.jpg", "file", 4, root / "b/3.jpg"),
        _row("link.jpg", "symlink", reason="symlink (never followed)"),
        _row("skip", "directory", reason="directory excluded by pattern"),
    ]
    assert stats == ListingStats(entries=5, eligible=2, eligible_bytes=6)


def _row(
    path: str,
    kind: str,
    size: int | None = None,
    real: Path | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "path": path,
        "path_raw": path.encode(),
        "kind": kind,
        "size": size,
        "mtime_ns": real.stat().st_mtime_ns if real else None,
        "skip_reason": reason,
    }


def _many_files(count: int) -> Iterator[str]:
    for i in range(count):
        yield f"d{i % 4}/f{i:04d}.jpg" if i % 3 else f"f{i:04d}.png"


def test_small_batches_write_the_same_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "root", {rel: rel.encode() for rel in _many_files(103)})
    default_out, small_out = tmp_path / "default.parquet", tmp_path / "small.parquet"
    patterns = Patterns(["*.jpg"], [])
    default_stats = write_listing(root, patterns, default_out)
    monkeypatch.setattr(_listing, "BATCH_ROWS", 10)
    small_stats = write_listing(root, patterns, small_out)
    assert (
        small_stats
        == default_stats
        == ListingStats(103, 68, sum(len(rel) for rel in _many_files(103) if rel.endswith(".jpg")))
    )
    small = pq.read_table(small_out)
    assert pq.read_table(default_out).equals(small)
    assert small.num_rows == 103
    assert pq.ParquetFile(small_out).metadata.num_row_groups > 1  # batching really happened


def test_slices_of_a_directory_give_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serial crawl classifies a directory a slice at a time (to let go of the entries and
    their stats): slices of any size give the same rows, in the same order."""
    root = make_tree(tmp_path / "root", {rel: rel.encode() for rel in _many_files(103)})
    (root / "d1" / "link.jpg").symlink_to(root / "f0000.png")
    os.mkfifo(root / "d2" / "pipe.jpg")
    patterns = Patterns(["*.jpg"], ["d3"])
    whole = listed(root, patterns)
    for size in (1, 2, 7):
        monkeypatch.setattr(_listing, "SLICE", size)
        assert listed(root, patterns) == whole
    assert len(whole) == 103 + 2 - 16 + 1  # d3's 16 files pruned, its directory row kept


def test_crawl_is_lazy(tmp_path: Path) -> None:
    """The crawl is a generator: the first row comes before later directories are read."""
    make_tree(tmp_path, {"a/1.jpg": b"", "b/2.jpg": b""})
    rows = crawl(tmp_path, ALL)
    assert next(rows).path == "a/1.jpg"
    (tmp_path / "b" / "3.jpg").write_bytes(b"")
    assert [r.path for r in rows] == ["b/2.jpg", "b/3.jpg"]
