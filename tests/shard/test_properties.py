"""Property tests (hypothesis) of the invariants that resume and WebDataset rely on: every
listed file is in exactly one shard, shards stay within their bounds and do not move when the
same tree is listed again; member keys are unique, relative and split where WebDataset splits."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mountproc._listing.listing import Patterns, write_listing
from mountproc._listing.sharding import ShardBounds, iter_shards, write_plan
from mountproc._shard.sample import member_key

# name bytes that stress sorting, escaping and splitting: dots, %, spaces, controls, non-UTF-8
NAME_BYTES = st.sampled_from([b"a", b"B", b".", b"%", b" ", b"-", b"\n", b"\xe9", b"\xc3\xa9"])
NAMES = (
    st.lists(NAME_BYTES, min_size=1, max_size=6)
    .map(b"".join)
    .filter(lambda n: n not in (b".", b".."))
)
TREES = st.dictionaries(
    st.lists(NAMES, min_size=1, max_size=3).map(tuple),  # a relative path, by components
    st.integers(min_value=0, max_value=3000),  # its size
    max_size=40,
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write_tree(root: Path, tree: dict[tuple[bytes, ...], int]) -> dict[str, int]:
    """Create the files (skipping paths that clash with a directory); return relpath -> size."""
    made: dict[str, int] = {}
    for parts, size in sorted(tree.items()):
        path = os.path.join(os.fsencode(root), *parts)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "xb") as f:
                f.write(b"x" * size)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a file where a directory is wanted, or the reverse
        made[os.fsdecode(b"/".join(parts))] = size
    return made


def _shards(root: Path, work: Path, bounds: ShardBounds, tag: str) -> list[list[tuple[str, int]]]:
    listing, plan = work / f"listing-{tag}.parquet", work / f"plan-{tag}.parquet"
    write_listing(root, Patterns([], []), listing)
    write_plan(listing, plan, bounds)
    shards: list[list[tuple[str, int]]] = []
    for index, entries in iter_shards(plan):
        assert index == len(shards), "shard indices are consecutive from 0"
        shards.append([(e.path, e.size) for e in entries])
    return shards


@SETTINGS
@given(
    tree=TREES,
    max_files=st.integers(min_value=1, max_value=7),
    max_bytes=st.integers(min_value=1, max_value=8000),
)
def test_every_file_in_exactly_one_shard_within_bounds_and_stable(
    tree: dict[tuple[bytes, ...], int], max_files: int, max_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, work = Path(tmp) / "src", Path(tmp)
        root.mkdir()
        made = _write_tree(root, tree)
        bounds = ShardBounds(max_files, max_bytes)
        shards = _shards(root, work, bounds, "first")
        flat = [path for shard in shards for path, _ in shard]
        assert sorted(flat) == sorted(made)  # every file, and each exactly once
        assert len(set(flat)) == len(flat)
        # consecutive runs of the listing: depth first, each directory's names sorted
        assert flat == sorted(flat, key=lambda path: path.split("/"))
        for shard in shards:
            assert 1 <= len(shard) <= max_files
            total = sum(size for _, size in shard)
            assert total <= max_bytes or len(shard) == 1  # only a lone oversized file exceeds
        assert _shards(root, work, bounds, "again") == shards  # stable under re-listing


RELPATHS = st.lists(NAMES, min_size=1, max_size=4).map(lambda ps: os.fsdecode(b"/".join(ps)))


@SETTINGS
@given(paths=st.sets(RELPATHS, max_size=30))
def test_member_keys_are_unique_safe_and_split_like_webdataset(paths: set[str]) -> None:
    keys = {member_key(p): p for p in paths}
    assert len(keys) == len(paths)  # injective
    for key in keys:
        assert not key.startswith("/")
        parts = key.split("/")
        assert all(part not in ("", ".", "..") for part in parts)
        assert "." not in parts[-1]  # WebDataset splits key and suffix at the first dot
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
        key.encode("utf-8")  # valid UTF-8: no surrogate left
        member = f"{key}.json"
        base = member.rsplit("/", 1)[-1]
        assert member[: len(member) - len(base)] + base.split(".", 1)[0] == key
