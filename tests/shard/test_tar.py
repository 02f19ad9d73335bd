"""Tests of ``_shard.tar``: reproducible tars, built beside their final name."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mountproc._shard.sample import member_key
from mountproc._shard.tar import BATCH_BYTES, UNHASHED_MAX, TarBuilder, header

# The split WebDataset's ``base_plus_ext`` uses to cut a member name into key and suffix.
MEMBERS = [
    ("a%2Eb.json", b'{"x": 1}'),
    ("a%2Eb.txt", b"hello"),
    ("dir/ファイル.jpg", b"\xff\xd8" + bytes(range(256)) * 10),
    ("d" * 150 + "/long.txt", b""),
]


def build(path: Path, members: list[tuple[str, bytes]]) -> tuple[str, int]:
    with TarBuilder(path) as tar:
        for name, data in members:
            tar.add(name, data)
        return tar.close()


def test_tar_is_byte_identical_when_built_twice(tmp_path: Path) -> None:
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    sha1, size1 = build(one, MEMBERS)
    sha2, size2 = build(two, MEMBERS)
    assert one.read_bytes() == two.read_bytes()
    assert (sha1, size1) == (sha2, size2)
    other = tmp_path / "other.tar"
    build(other, [*MEMBERS[:1], ("a%2Eb.txt", b"hellO"), *MEMBERS[2:]])
    assert other.read_bytes() != one.read_bytes()


def test_tar_members_have_fixed_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    build(path, MEMBERS)
    with tarfile.open(path) as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == [name for name, _ in MEMBERS]
        for info, (_, data) in zip(infos, MEMBERS, strict=True):
            assert info.isfile()
            assert info.mtime == 0
            assert (info.uid, info.gid) == (0, 0)
            assert (info.uname, info.gname) == ("", "")
            assert info.mode == 0o444
            assert info.size == len(data)
            extracted = tf.extractfile(info)
            assert extracted is not None
            assert extracted.read() == data


def test_tar_hash_and_size_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    sha, size = build(path, MEMBERS)
    content = path.read_bytes()
    assert sha == hashlib.sha256(content).hexdigest()
    assert size == len(content) == path.stat().st_size
    assert size % 512 == 0


def test_empty_tar_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"
    sha, size = build(path, [])
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert size == path.stat().st_size > 0
    with tarfile.open(path) as tf:
        assert tf.getmembers() == []


def test_tar_partial_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    tar = TarBuilder(path)
    tar.add("a.txt", b"a")
    assert tar.partial.parent == tmp_path
    assert tar.partial.name.startswith("x.tar.")
    assert tar.partial.name.endswith(".partial")
    assert tar.partial.exists()
    assert not path.exists()
    tar.close()
    assert path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar"]


def test_tar_abort_removes_partial(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    tar = TarBuilder(path)
    tar.add("a.txt", b"a")
    tar.abort()
    assert list(tmp_path.iterdir()) == []


def test_tar_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"

    def build_and_fail() -> None:
        with TarBuilder(path) as tar:
            tar.add("a.txt", b"a")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_and_fail()
    assert list(tmp_path.iterdir()) == []


def test_tar_non_ascii_names_round_trip(tmp_path: Path) -> None:
    sources = [os.fsdecode(b"caf\xe9/na\xefve.bin"), "日本語/ファイル.png", "emoji 🎉"]
    names = [member_key(s) + ".bin" for s in sources]
    path = tmp_path / "x.tar"
    build(path, [(n, n.encode()) for n in names])
    with tarfile.open(path) as tf:
        assert tf.getnames() == names
        for n in names:
            f = tf.extractfile(n)
            assert f is not None
            assert f.read() == n.encode()


# --- publish ---------------------------------------------------------------------------------


def _reference_tar(members: list[tuple[str, bytes]]) -> bytes:
    """The same members written by ``tarfile.addfile`` itself."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_tar_is_byte_identical_to_tarfiles_own(tmp_path: Path) -> None:
    """Headers by tarfile, data and padding written directly: the same bytes as addfile for
    empty, block-sized, odd-sized and 3 MB members, long (PAX) and non-ASCII names."""
    members = [
        ("a/empty.txt", b""),
        ("a/block.bin", b"x" * 512),
        ("a/odd.bin", bytes(range(256)) * 3 + b"!"),
        ("d" * 120 + "/long%2Ename.jpg", b"long name"),
        ("caf\u00e9/%E9t%C3%A9.json", '{"é": 1}'.encode()),
        ("big.bin", os.urandom(3 * 1024 * 1024 + 7)),
    ]
    with TarBuilder(tmp_path / "t.tar") as tar:
        for name, data in members:
            tar.add(name, data)
        sha, size = tar.close()
    written = (tmp_path / "t.tar").read_bytes()
    assert written == _reference_tar(members)
    assert (sha, size) == (hashlib.sha256(written).hexdigest(), len(written))
    with tarfile.open(tmp_path / "t.tar") as tf:
        got = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
    assert got == members


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(
        st.text(st.characters(max_codepoint=127), max_size=110),
        st.text(max_size=60),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=95, max_size=105),
    ),
    size=st.one_of(st.integers(0, 1 << 40), st.integers(8**11 - 2, 8**11 + 2)),
)
def test_headers_are_tarfiles_own(name: str, size: int) -> None:
    """The header template filled in (ASCII names up to 100 bytes) is byte for byte the header
    ``tarfile`` makes, and any other name or size gets ``tarfile``'s (with its PAX header)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    assert header(name, size) == info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def test_the_end_is_tarfiles_own_at_every_offset_in_a_record(tmp_path: Path) -> None:
    """0 to 21 empty members (a header block each): the end of the archive (two zero blocks,
    then zeros to a whole record of 20 blocks) falls at every offset inside a record."""
    for count in range(22):
        members = [(f"e{i}.txt", b"") for i in range(count)]
        assert build(tmp_path / f"{count}.tar", members)[1] == len(_reference_tar(members))
        assert (tmp_path / f"{count}.tar").read_bytes() == _reference_tar(members)


def test_tars_of_many_batches_are_tarfiles_own(tmp_path: Path) -> None:
    """Members across many writev batches and past the bound on bytes not hashed yet, and one
    bigger than a batch: the same bytes, size and digests as ``tarfile`` and ``hashlib``; the
    md5 asked for midway is that of the members added so far."""
    rng = random.Random(7)
    members = [(f"k/{i:04d}.bin", rng.randbytes(rng.randint(0, 60_000))) for i in range(700)]
    members.insert(350, ("big.bin", rng.randbytes(BATCH_BYTES + 3)))
    path = tmp_path / "t.tar"
    with TarBuilder(path) as tar:
        for name, data in members[:400]:
            tar.add(name, data)
        added = b"".join(_member_bytes(name, data) for name, data in members[:400])
        assert tar.md5 == hashlib.md5(added).hexdigest()
        for name, data in members[400:]:
            tar.add(name, data)
        sha, size = tar.close()
    reference = _reference_tar(members)
    assert size > UNHASHED_MAX
    assert path.read_bytes() == reference
    assert (sha, size) == (hashlib.sha256(reference).hexdigest(), len(reference))
    assert tar.md5 == hashlib.md5(reference).hexdigest()


def _member_bytes(name: str, data: bytes) -> bytes:
    """One member as ``tarfile`` writes it: header, data, padding to a block."""
    return _reference_tar([(name, data)])[: 512 + len(data) + -len(data) % 512]


def test_the_hashing_thread_ends_with_the_tar(tmp_path: Path) -> None:
    """Closing or aborting a builder leaves no thread of its own behind."""
    before = {t.ident for t in threading.enumerate()}
    kept = []  # still referenced: their threads must end all the same
    for i in range(3):
        with TarBuilder(tmp_path / f"{i}.tar") as tar:
            kept.append(tar)
            tar.add("a.bin", os.urandom(BATCH_BYTES + 1))
            if i == 2:
                tar.abort()
                break
            tar.close()
    time.sleep(0.2)  # an aborted builder's thread finishes the buffer it was hashing
    assert {t.ident for t in threading.enumerate()} <= before
