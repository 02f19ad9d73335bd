"""Tests of ``_outputs.publish``: atomic publishing into outputs, never overwriting."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from mountproc._outputs.publish import publish
from mountproc._shard.tar import MEMBER_MODE


# The split WebDataset's ``base_plus_ext`` uses to cut a member name into key and suffix.
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

    monkeypatch.setattr("mountproc._outputs.publish.os.link", fail)
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

    monkeypatch.setattr("mountproc._outputs.publish.os.link", exdev)
    monkeypatch.setattr("mountproc._outputs.publish.os.fsync", fsync)
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

    monkeypatch.setattr("mountproc._outputs.publish.shutil.copyfileobj", short_copy)
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

    monkeypatch.setattr("mountproc._outputs.publish.os.link", exdev_after_a_rival)
    src = make_file(tmp_path / "x.tar")
    with pytest.raises(FileExistsError):
        publish(src, dest)
    assert dest.read_bytes() == b"theirs"
    assert src.exists()
