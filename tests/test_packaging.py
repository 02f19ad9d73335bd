"""Tests of ``_shard.tar``: member keys, reproducible tars and atomic publishing."""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mountproc._outputs.publish import publish
from mountproc._shard.sample import member_key
from mountproc._shard.tar import MEMBER_MODE, TarBuilder

# The split WebDataset's ``base_plus_ext`` uses to cut a member name into key and suffix.
WDS_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

TRICKY = [
    "a.b",
    "a%2Eb",
    "a%2eb",
    "a_b",
    "a%b",
    "a%25b",
    "x/y.z",
    "x.y/z",
    "x%2Ey/z",
    "x/y%2Ez",
    ".hidden",
    "%2Ehidden",
    "dir/.hidden",
    ".dir/file",
    "a..b",
    "...",
    "a\nb",
    "a%0Ab",
    "a\x7fb",
    "a%7Fb",
    os.fsdecode(b"caf\xff"),
    "caf%FF",
    "caf\u00ff",
    "tab\there.jpg",
    "日本/ファイル.tar.gz",
    "a b/c d.e f",
]


def wds_split(name: str) -> tuple[str, str] | None:
    m = WDS_SPLIT.match(name)
    return (m.group(1), m.group(2)) if m else None


# --- member_key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "key"),
    [
        ("plain", "plain"),
        ("photo.jpg", "photo%2Ejpg"),
        ("a.b/c.d/e.f", "a.b/c.d/e%2Ef"),
        ("100%.txt", "100%25%2Etxt"),
        ("dir%/x", "dir%25/x"),
        ("line\nbreak", "line%0Abreak"),
        ("nul\x00x", "nul%00x"),
        ("del\x7f", "del%7F"),
        ("ctl\x1f/f", "ctl%1F/f"),
        (os.fsdecode(b"caf\xe9.txt"), "caf%E9%2Etxt"),
        (os.fsdecode(b"d\x80ir/f\xff"), "d%80ir/f%FF"),
        ("café.txt", "café%2Etxt"),
        (".hidden", "%2Ehidden"),
        ("...", "%2E%2E%2E"),
        ("...dir/x", "...dir/x"),
    ],
)
def test_member_key_escapes(relpath: str, key: str) -> None:
    assert member_key(relpath) == key


@pytest.mark.parametrize(
    "relpath",
    ["", "/abs", "/abs/x.jpg", "a//b", "a/", "./a", "a/./b", "..", "../x", "a/../b", "a/..", "."],
)
def test_member_key_rejects_unsafe_paths(relpath: str) -> None:
    with pytest.raises(ValueError, match="unsafe relative path"):
        member_key(relpath)


def test_member_key_is_injective_on_tricky_names() -> None:
    keys = {name: member_key(name) for name in TRICKY}
    assert len(set(keys.values())) == len(TRICKY), keys


def _all_names() -> list[str]:
    alphabet = ["a", ".", "%", "2", "E", "/", "\x01", "\udcff", "\xff"]
    names = []
    for n in range(1, 5):
        for combo in itertools.product(alphabet, repeat=n):
            name = "".join(combo)
            parts = name.split("/")
            if not any(p in ("", ".", "..") for p in parts):
                names.append(name)
    return names


def test_member_key_is_injective_exhaustively() -> None:
    names = _all_names()
    assert len(names) > 3000
    keys: dict[str, str] = {}
    for name in names:
        key = member_key(name)
        assert key not in keys, f"{name!r} and {keys[key]!r} both map to {key!r}"
        keys[key] = name


def assert_safe_key(relpath: str) -> None:
    key = member_key(relpath)
    assert not key.startswith("/")
    assert ".." not in key.split("/")
    assert "" not in key.split("/")
    assert "." not in key.rsplit("/", 1)[-1]
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
    key.encode("utf-8")  # no lone surrogates left
    assert key.count("/") == relpath.count("/")
    for suffix in ("jpg", "json", "seg.png"):
        assert wds_split(f"{key}.{suffix}") == (key, suffix)


@pytest.mark.parametrize("relpath", TRICKY)
def test_member_key_is_safe_and_splits_like_webdataset(relpath: str) -> None:
    assert_safe_key(relpath)


def test_every_key_is_safe_and_splits_like_webdataset() -> None:
    for relpath in _all_names():
        assert_safe_key(relpath)


def test_unescaped_name_would_split_wrongly() -> None:
    """The reason dots are escaped: WebDataset cuts the key at the first dot of the name."""
    assert wds_split("x.y/a.b.jpg") == ("x.y/a", "b.jpg")
    assert wds_split(member_key("x.y/a.b") + ".jpg") == ("x.y/a%2Eb", "jpg")


# --- TarBuilder ------------------------------------------------------------------------------

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


def make_file(path: Path, data: bytes = b"payload") -> Path:
    path.write_bytes(data)
    return path


def test_publish_moves_and_makes_read_only(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    src = make_file(tmp_path / "x.tar")
    dest = tmp_path / "out" / "x.tar"
    publish(src, dest)
    assert not src.exists()
    assert dest.read_bytes() == b"payload"
    assert stat.S_IMODE(dest.stat().st_mode) == MEMBER_MODE == 0o444


def test_publish_refuses_to_overwrite(tmp_path: Path) -> None:
    src = make_file(tmp_path / "new")
    dest = make_file(tmp_path / "old", b"old")
    with pytest.raises(FileExistsError):
        publish(src, dest)
    assert dest.read_bytes() == b"old"
    assert src.read_bytes() == b"payload"


def test_publish_propagates_other_link_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: Any, dest: Any) -> None:
        raise OSError(errno.EACCES, "denied")

    monkeypatch.setattr("mountproc._shard.tar.os.link", fail)
    src = make_file(tmp_path / "x")
    with pytest.raises(PermissionError):
        publish(src, tmp_path / "y")
    assert src.exists()
    assert not (tmp_path / "y").exists()


def _cross_device(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make hard-linking fail with EXDEV; return the list of paths fsync is called on."""

    def exdev(src: Any, dest: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr("mountproc._shard.tar.os.link", exdev)
    monkeypatch.setattr("mountproc._shard.tar.os.fsync", fsync)
    return synced


def test_publish_across_devices_copies_fsyncs_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _cross_device(monkeypatch)
    (tmp_path / "out").mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = make_file(tmp_path / "x.tar", data)
    dest = tmp_path / "out" / "x.tar"
    publish(src, dest)
    assert not src.exists()
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    assert str(dest) in synced
    assert str(dest.parent) in synced


def test_publish_across_devices_leaves_no_partial_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cross_device(monkeypatch)

    def short_copy(fin: io.BufferedReader, fout: io.BufferedWriter) -> None:
        fout.write(fin.read(3))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mountproc._shard.tar.shutil.copyfileobj", short_copy)
    src = make_file(tmp_path / "x.tar")
    dest = tmp_path / "y.tar"
    with pytest.raises(OSError, match="No space") as info:
        publish(src, dest)
    assert info.value.errno == errno.ENOSPC
    assert not dest.exists()
    assert src.read_bytes() == b"payload"


def test_publish_across_devices_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "y.tar"

    def exdev_after_a_rival(src: Any, target: Any) -> None:
        dest.write_bytes(b"theirs")  # another publisher wins the race for the name
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("mountproc._shard.tar.os.link", exdev_after_a_rival)
    src = make_file(tmp_path / "x.tar")
    with pytest.raises(FileExistsError):
        publish(src, dest)
    assert dest.read_bytes() == b"theirs"
    assert src.exists()


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
