"""Tests of _listing.testmode: the test-mode subset without a full listing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import make_hostile_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mountproc._listing import sharding
from mountproc._listing import testmode as _sampling
from mountproc._listing.listing import OnSick, Patterns, write_listing
from mountproc._listing.testmode import write_test_listing

JPG = Patterns(["*.jpg", "*.JPG"], ["tmp"])


def subset_from_full_listing(root: Path, patterns: Patterns, size: int, work: Path) -> list[bytes]:
    """What test mode took before: the full listing, then ``test_subset`` (the reference)."""
    listing = work / "full.parquet"
    write_listing(root, patterns, listing)
    rows = pq.read_table(listing, columns=["path_raw"]).column("path_raw").to_pylist()
    return [rows[i] for i in sorted(sharding.test_subset(listing, size))]


def sampled(root: Path, patterns: Patterns, size: int, work: Path) -> list[dict[str, object]]:
    out = work / "sample.parquet"
    write_test_listing(root, patterns, out, size, on_sick=_raise)
    rows: list[dict[str, object]] = pq.read_table(out).to_pylist()
    return rows


def _raise(exc: OSError) -> None:
    raise exc


def write_tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("size", [1, 2, 5, 11, 15, 40, 1000])
def test_the_subset_equals_the_full_listings_on_a_hostile_tree(tmp_path: Path, size: int) -> None:
    src = tmp_path / "src"
    make_hostile_tree(src, tmp_path / "outside")
    write_tree(src, ["tmp/skipped.jpg", "a.b/c.d/e.jpg", "clinic-a/2024-01/zz/deep.jpg"])
    expected = subset_from_full_listing(src, JPG, size, tmp_path)
    rows = sampled(src, JPG, size, tmp_path)
    assert [r["path_raw"] for r in rows] == expected
    for row in rows:
        st_ = (src / os.fsdecode(row["path_raw"])).stat()  # type: ignore[arg-type]
        assert (row["size"], row["mtime_ns"]) == (st_.st_size, st_.st_mtime_ns)
        assert (row["kind"], row["skip_reason"]) == ("file", None)


names = st.sampled_from(["a", "b", "a-b", "a.b", "z", "IMG_1", "x y", "caf\udce9"])
paths = st.lists(names, min_size=1, max_size=4).map(lambda parts: "/".join(parts) + ".jpg")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(paths, min_size=0, max_size=40, unique=True), size=st.integers(1, 30))
def test_the_subset_equals_the_full_listings_on_any_tree(files: list[str], size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        # a path that is a file in one entry and a directory in another: keep the first
        for rel in files:
            try:
                write_tree(root, [rel])
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue
        expected = subset_from_full_listing(root, JPG, size, Path(tmp))
        assert [r["path_raw"] for r in sampled(root, JPG, size, Path(tmp))] == expected


def test_the_walk_stops_once_enough_folders_gave_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 folders of 20 files and a flat folder of 3,000 after them: a subset of 5 reads the
    root and five folders, never the flat one."""
    src = tmp_path / "src"
    write_tree(src, [f"f{d:02d}/img{i:02d}.jpg" for d in range(50) for i in range(20)])
    write_tree(src, [f"zz-flat/img{i:04d}.jpg" for i in range(3000)])
    read: list[str] = []
    real = _sampling._entries

    def counting(path: str, on_sick: OnSick) -> list[os.DirEntry[str]]:
        read.append(os.path.relpath(path, src))
        return real(path, on_sick)

    monkeypatch.setattr(_sampling, "_entries", counting)
    rows = sampled(src, JPG, 5, tmp_path)
    assert [r["path"] for r in rows] == [f"f{d:02d}/img00.jpg" for d in range(5)]
    assert read == [".", "f00", "f01", "f02", "f03", "f04"]


def test_few_folders_give_several_files_each(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, [f"flat/img{i:04d}.jpg" for i in range(2000)] + ["top.jpg"])
    rows = sampled(src, JPG, 5, tmp_path)
    assert [r["path"] for r in rows] == [
        *(f"flat/img{i:04d}.jpg" for i in range(4)),
        "top.jpg",
    ]


def test_an_empty_or_unmatched_tree_gives_an_empty_listing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, ["notes.txt", "tmp/a.jpg"])
    assert sampled(src, JPG, 5, tmp_path) == []
