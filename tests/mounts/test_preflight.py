"""Tests of _mounts.preflight: the source, scratch and outputs checks, on hand-written mount
tables and on real bind mounts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mountproc._errors import MountError, WorkerMountError
from mountproc._mounts.dirs import DirReport, check_output_dir, check_writable_dir, human_bytes
from mountproc._mounts.source import check_source
from mountproc._mounts.table import MountInfo
from mountproc._mounts.workers import check_worker
from mountproc._records import WorkerCheck

BindMount = Callable[..., Path]


def _mount(mount_id: int, mount_point: str, fstype: str = "ext4", opts: str = "rw") -> MountInfo:
    """Build a MountInfo for lookup tests."""
    return MountInfo(mount_id, 1, "/", mount_point, (opts,), fstype, "src", ("rw",))


# --- check_source with a hand-written table ----------------------------------------------------


def _table_with(mount_point: Path, fstype: str, opts: str) -> list[MountInfo]:
    """A root mount plus one mount at mount_point."""
    return [_mount(1, "/"), _mount(2, os.path.realpath(mount_point), fstype, opts)]


def test_check_source_network_readonly_passes(tmp_path: Path) -> None:
    """A subdirectory of a read-only network mount passes and is on a mount."""
    sub = tmp_path / "sub"
    sub.mkdir()
    table = _table_with(tmp_path, "nfs4", "ro")
    report, warnings = check_source(sub, strict=True, allow_writable=False, mounts=table)
    assert warnings == []
    assert (report.kind, report.readonly, report.on_mount) == ("network", True, True)
    assert not report.is_mount_point
    assert json.loads(json.dumps(report.as_dict()))["fstype"] == "nfs4"


def test_check_source_network_writable_fails(tmp_path: Path) -> None:
    """A read-write network mount fails unless read-only is not declared."""
    table = _table_with(tmp_path, "nfs4", "rw")
    with pytest.raises(MountError, match="read-write"):
        check_source(tmp_path, strict=False, allow_writable=False, mounts=table)
    report, warnings = check_source(
        tmp_path, declared_readonly=False, strict=False, allow_writable=False, mounts=table
    )
    assert warnings == []
    assert not report.readonly


def test_check_source_not_a_directory(tmp_path: Path) -> None:
    """A file is not a source."""
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(MountError, match="is not a directory"):
        check_source(file, strict=False, allow_writable=False, mounts=[_mount(1, "/")])


def test_check_source_not_listable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory this user may not read or list fails (os.access is faked: root reads all)."""
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(MountError, match="not readable"):
        check_source(tmp_path, strict=False, allow_writable=False, mounts=[_mount(1, "/")])


def test_check_source_messages_are_one_line(tmp_path: Path) -> None:
    """A path with a newline in its name still gives a one-line message."""
    odd = tmp_path / "a\nb"
    odd.mkdir()
    with pytest.raises(MountError) as info:
        check_source(odd, strict=True, allow_writable=False, mounts=[_mount(1, "/")])
    assert "\n" not in str(info.value)
    assert "a\\nb" in str(info.value)


# --- check_writable_dir ------------------------------------------------------------------------


def test_writable_dir_fresh_tmp_passes(tmp_path: Path) -> None:
    """A fresh temporary directory is writable."""
    check_writable_dir(tmp_path, "scratch")


def test_writable_dir_missing_under_writable_parent(tmp_path: Path) -> None:
    """A missing directory under a writable parent passes and is not created."""
    target = tmp_path / "a" / "b"
    check_writable_dir(target, "outputs")
    assert not (tmp_path / "a").exists()


def test_writable_dir_is_a_file(tmp_path: Path) -> None:
    """A file is not a writable directory; the error names the role and the path."""
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(MountError, match=r"outputs directory .*/f is not writable"):
        check_writable_dir(file, "outputs")
    with pytest.raises(MountError, match=r"scratch directory .* cannot be created"):
        check_writable_dir(file / "sub", "scratch")


# --- real bind mounts --------------------------------------------------------------------------


def _source_tree(tmp_path: Path, name: str = "src") -> Path:
    """A directory with one file, to be bind-mounted."""
    src = tmp_path / name
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    return src


@pytest.mark.mount
def test_readonly_bind_mount_passes(tmp_path: Path, bind_mount: BindMount) -> None:
    """A read-only bind mount is found as a mount point (os.path.ismount misses it) and passes."""
    dst = bind_mount(_source_tree(tmp_path), tmp_path / "ro", True)
    report, warnings = check_source(dst, strict=True, allow_writable=False)
    assert warnings == []
    assert report.is_mount_point
    assert report.on_mount
    assert report.readonly
    assert report.mount_point == os.path.realpath(dst)


@pytest.mark.mount
def test_readwrite_bind_mount_fails(tmp_path: Path, bind_mount: BindMount) -> None:
    """A read-write bind mount fails, naming the path and 'read-write'."""
    dst = bind_mount(_source_tree(tmp_path), tmp_path / "rw", False)
    with pytest.raises(MountError, match="read-write") as info:
        check_source(dst, strict=True, allow_writable=False)
    assert str(dst) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.mount
def test_readwrite_bind_mount_allowed(tmp_path: Path, bind_mount: BindMount) -> None:
    """allow_writable=True lets a read-write mount pass with a warning."""
    dst = bind_mount(_source_tree(tmp_path), tmp_path / "rw", False)
    report, warnings = check_source(dst, strict=True, allow_writable=True)
    assert not report.readonly
    assert len(warnings) == 1
    assert "read-write" in warnings[0]


@pytest.mark.mount
def test_missing_source_fails(tmp_path: Path) -> None:
    """A missing source fails with a message naming it."""
    missing = tmp_path / "nope"
    with pytest.raises(MountError, match="does not exist") as info:
        check_source(missing, strict=False, allow_writable=False)
    assert str(missing) in str(info.value)


@pytest.mark.mount
def test_plain_directory_strict_and_lenient(tmp_path: Path) -> None:
    """A plain directory fails under strict and is a warning otherwise, without a ro check."""
    plain = _source_tree(tmp_path, "photos")
    with pytest.raises(MountError, match="is not a mount point"):
        check_source(plain, strict=True, allow_writable=False)
    report, warnings = check_source(plain, strict=False, allow_writable=False)
    assert not report.on_mount
    assert len(warnings) == 1
    assert "not a mount point" in warnings[0]


@pytest.mark.mount
def test_mount_point_with_space(tmp_path: Path, bind_mount: BindMount) -> None:
    """A read-only bind mount whose directory name has a space is found and passes."""
    dst = bind_mount(_source_tree(tmp_path), tmp_path / "my data", True)
    report, warnings = check_source(dst, strict=True, allow_writable=False)
    assert warnings == []
    assert report.is_mount_point
    assert report.mount_point.endswith("/my data")


@pytest.mark.mount
def test_writable_dir_on_readonly_mount_fails(tmp_path: Path, bind_mount: BindMount) -> None:
    """An outputs directory on a read-only bind mount fails, and so does one to be made in it."""
    dst = bind_mount(_source_tree(tmp_path), tmp_path / "ro", True)
    with pytest.raises(MountError, match=r"outputs directory .* read-only mount"):
        check_writable_dir(dst, "outputs")
    with pytest.raises(MountError, match=r"scratch directory .* cannot be created"):
        check_writable_dir(dst / "new", "scratch")
    assert not (dst / "new").exists()


# --- allow_empty, free space, human_bytes ------------------------------------------------------


def test_check_source_empty_needs_allow_empty(tmp_path: Path) -> None:
    """An empty source is an error naming --allow-empty, unless empty sources are allowed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    table = _table_with(empty, "nfs4", "ro")
    with pytest.raises(MountError, match="is empty") as info:
        check_source(empty, strict=True, allow_writable=False, allow_empty=False, mounts=table)
    assert "--allow-empty" in str(info.value)
    report, warnings = check_source(empty, strict=True, allow_writable=False, mounts=table)
    assert (report.readonly, warnings) == (True, [])
    (empty / "a.jpg").write_bytes(b"x")
    check_source(empty, strict=True, allow_writable=False, allow_empty=False, mounts=table)


def test_check_output_dir_reports_its_disk(tmp_path: Path) -> None:
    """A writable directory gives its mount, file-system type and free space."""
    report = check_output_dir(tmp_path / "outputs", "outputs", min_free=1)
    assert isinstance(report, DirReport)
    assert (report.role, report.path) == ("outputs", tmp_path / "outputs")
    assert report.free_bytes > 0
    assert report.fstype
    assert os.path.realpath(tmp_path).startswith(report.mount_point)
    assert report.as_dict()["free"] == human_bytes(report.free_bytes)


def test_check_output_dir_needs_min_free_space(tmp_path: Path) -> None:
    """Less free space than --min-free-space is an error naming the option and the role."""
    with pytest.raises(MountError, match=r"--min-free-space=1048576\.0 TiB") as info:
        check_output_dir(tmp_path, "scratch", min_free=1 << 60)
    assert str(info.value).startswith(f"scratch directory {tmp_path} has ")
    assert "--scratch" in str(info.value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (7, "7 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (300 * 1024**2, "300.0 MiB"),
        (3 * 1024**3 // 2, "1.5 GiB"),
        (1 << 40, "1.0 TiB"),
        (1 << 60, "1048576.0 TiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    """Binary units, one decimal; bytes without one; nothing beyond TiB."""
    assert human_bytes(n) == text


# --- check_worker ------------------------------------------------------------------------------


@pytest.fixture
def worker_check(tmp_path: Path) -> WorkerCheck:
    """A check as the driver builds it: the view of a real source directory, a real token."""
    src = _source_tree(tmp_path)
    token_path = tmp_path / "scratch" / ".mountproc-token"
    token_path.parent.mkdir()
    token_path.write_text("token-1")
    report, _ = check_source(src, strict=False, allow_writable=True)
    return WorkerCheck(str(src), report.view(), str(token_path), "token-1", 5.0)


def test_check_worker_passes_when_all_agree(worker_check: WorkerCheck) -> None:
    """The same source and a readable token: the worker shares the driver's scratch."""
    assert check_worker(worker_check, "w1 (pid 1)") is True


def test_check_worker_token_of_another_run(worker_check: WorkerCheck) -> None:
    """A token file holding another token means another scratch directory: the worker has a
    scratch of its own."""
    Path(worker_check.token_path).write_text("token-2")
    assert check_worker(worker_check, "w1 (pid 1)") is False


def test_check_worker_token_missing(worker_check: WorkerCheck) -> None:
    """No token file: the worker does not see the driver's scratch, but can write its own."""
    Path(worker_check.token_path).unlink()
    assert check_worker(worker_check, "w1") is False


def test_check_worker_without_a_writable_scratch_of_its_own(worker_check: WorkerCheck) -> None:
    """A worker that neither shares scratch nor can create its own is named."""
    token = Path(worker_check.token_path)
    shutil.rmtree(token.parent)
    token.parent.write_text("a file where the scratch directory should be")
    with pytest.raises(WorkerMountError, match=r"^worker w1 has no scratch of its own: scratch"):
        check_worker(worker_check, "w1")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"readonly": True}, "it is mounted read-write there"),
        ({"fstype": "nfs4", "source": "srv:/export"}, "mount the same export"),
        ({"on_mount": True}, "it is not a mount there"),
        ({"mount_point": "/mnt/elsewhere"}, "it is mounted at "),
    ],
)
def test_check_worker_names_a_different_view(
    worker_check: WorkerCheck, change: dict[str, Any], problem: str
) -> None:
    """The driver saw the source otherwise than this worker does: the worker and the
    difference are named."""
    check = replace(worker_check, view=replace(worker_check.view, **change))
    with pytest.raises(WorkerMountError) as info:
        check_worker(check, "w7 (pid 42)")
    message = str(info.value)
    assert message.startswith(f"worker w7 (pid 42) sees the source {worker_check.source}")
    assert problem in message
    assert "\n" not in message


def test_check_worker_names_both_exports(worker_check: WorkerCheck) -> None:
    """A different export is named as seen there and here."""
    view = worker_check.view
    check = replace(worker_check, view=replace(view, fstype="nfs4", source="srv:/export"))
    with pytest.raises(WorkerMountError) as info:
        check_worker(check, "w1")
    assert f"it is {view.fstype} {view.source} there but nfs4 srv:/export here" in str(info.value)


def test_check_worker_source_missing_there(worker_check: WorkerCheck) -> None:
    """A worker without the source directory fails the check, naming itself."""
    shutil.rmtree(worker_check.source)
    with pytest.raises(WorkerMountError, match=r"^worker w1: source .* does not exist"):
        check_worker(worker_check, "w1")
