"""Tests of mountproc._mounts: mountinfo parsing, mount lookup and the source/outputs preflight."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mountproc._errors import MountError
from mountproc._mounts import (
    MountInfo,
    check_source,
    check_writable_dir,
    classify,
    find_mount,
    is_readonly,
    parse_mountinfo,
    read_mount_table,
)

BindMount = Callable[[Path, Path, bool], Path]

ROOT_LINE = "1 0 254:0 / / rw,relatime - ext4 /dev/vda rw,discard"


def _mount(mount_id: int, mount_point: str, fstype: str = "ext4", opts: str = "rw") -> MountInfo:
    """Build a MountInfo for lookup tests."""
    return MountInfo(mount_id, 1, "/", mount_point, (opts,), fstype, "src", ("rw",))


# --- parse_mountinfo ---------------------------------------------------------------------------


def test_parse_zero_optional_fields() -> None:
    """A line without optional fields yields every field in place."""
    (info,) = parse_mountinfo(ROOT_LINE + "\n")
    assert info == MountInfo(
        1, 0, "/", "/", ("rw", "relatime"), "ext4", "/dev/vda", ("rw", "discard")
    )


def test_parse_two_optional_fields() -> None:
    """Optional fields before the separator are skipped, whatever their number."""
    line = "36 35 98:0 /mnt1 /mnt2 rw,noatime shared:1 master:2 - nfs4 srv:/export rw,vers=4.2"
    (info,) = parse_mountinfo(line)
    assert (info.mount_id, info.parent_id) == (36, 35)
    assert (info.root, info.mount_point) == ("/mnt1", "/mnt2")
    assert (info.fstype, info.source) == ("nfs4", "srv:/export")
    assert info.mount_options == ("rw", "noatime")
    assert info.super_options == ("rw", "vers=4.2")


def test_parse_octal_escapes() -> None:
    """Space, tab, newline and backslash escapes are decoded in root, mount point and source."""
    line = (
        r"40 1 0:50 /sub\134dir /mnt/my\040data ro shared:7 - "
        r"fuse.sshfs user@host:/a\011b\012c rw,user_id=0"
    )
    (info,) = parse_mountinfo(line)
    assert info.root == "/sub\\dir"
    assert info.mount_point == "/mnt/my data"
    assert info.source == "user@host:/a\tb\nc"
    assert info.fstype == "fuse.sshfs"


def test_parse_several_lines_and_blank_lines() -> None:
    """Entries come back in table order; blank lines are ignored."""
    text = ROOT_LINE + "\n\n" + "2 1 0:1 / /mnt rw - tmpfs tmpfs rw\n"
    assert [m.mount_point for m in parse_mountinfo(text)] == ["/", "/mnt"]


def test_parse_malformed_line_raises() -> None:
    """A line without the ' - ' separator is a one-line MountError."""
    with pytest.raises(MountError, match="line 1 is malformed") as info:
        parse_mountinfo("1 0 254:0 / / rw ext4 /dev/vda rw")
    assert "\n" not in str(info.value)


def test_read_mount_table_of_this_process() -> None:
    """The real table of this process has a root mount."""
    assert any(m.mount_point == "/" for m in read_mount_table())


def test_read_mount_table_missing_file(tmp_path: Path) -> None:
    """An unreadable mount table is a MountError naming the file."""
    missing = tmp_path / "mountinfo"
    with pytest.raises(MountError, match="cannot be read"):
        read_mount_table(str(missing))


def test_superblock_ro_versus_per_mount_ro(tmp_path: Path) -> None:
    """Either the per-mount or the superblock 'ro' makes a mount read-only."""
    per_mount, superblock, neither = parse_mountinfo(
        "2 1 0:1 / /a ro,relatime - ext4 /dev/a rw\n"
        "3 1 0:2 / /b rw,relatime - ext4 /dev/b ro,errors=continue\n"
        "4 1 0:3 / /c rw,relatime - ext4 /dev/c rw\n"
    )
    assert per_mount.mount_options[0] == "ro"
    assert superblock.super_options[0] == "ro"
    assert is_readonly(per_mount, tmp_path)
    assert is_readonly(superblock, tmp_path)
    assert not is_readonly(neither, tmp_path)


# --- find_mount and classify -------------------------------------------------------------------


def test_find_mount_longest_prefix() -> None:
    """The deepest mount containing the path wins."""
    mounts = [_mount(1, "/"), _mount(2, "/mnt"), _mount(3, "/mnt/data")]
    assert find_mount(Path("/mnt/data/x/y"), mounts).mount_id == 3
    assert find_mount(Path("/mnt/other"), mounts).mount_id == 2
    assert find_mount(Path("/srv"), mounts).mount_id == 1


def test_find_mount_is_component_wise() -> None:
    """/mnt/a does not contain /mnt/ab."""
    mounts = [_mount(1, "/"), _mount(2, "/mnt/a")]
    assert find_mount(Path("/mnt/ab"), mounts).mount_id == 1
    assert find_mount(Path("/mnt/ab/c"), mounts).mount_id == 1
    assert find_mount(Path("/mnt/a"), mounts).mount_id == 2
    assert find_mount(Path("/mnt/a/b"), mounts).mount_id == 2


def test_find_mount_last_overmount_wins() -> None:
    """Among equal mount points the last entry is the visible one."""
    mounts = [_mount(1, "/"), _mount(2, "/data"), _mount(3, "/data"), _mount(4, "/")]
    assert find_mount(Path("/data/x"), mounts).mount_id == 3
    assert find_mount(Path("/etc"), mounts).mount_id == 4


def test_find_mount_resolves_symlinks(tmp_path: Path) -> None:
    """The lookup uses the real path, so a symlink to a mount point finds that mount."""
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    mounts = [_mount(1, "/"), _mount(2, os.path.realpath(target))]
    assert find_mount(link, mounts).mount_id == 2


def test_find_mount_no_mount_raises() -> None:
    """An empty table is a MountError naming the path."""
    with pytest.raises(MountError, match="/x"):
        find_mount(Path("/x"), [])


@pytest.mark.parametrize(
    ("fstype", "kind"),
    [
        ("nfs", "network"),
        ("nfs4", "network"),
        ("cifs", "network"),
        ("smb3", "network"),
        ("9p", "network"),
        ("ceph", "network"),
        ("glusterfs", "network"),
        ("lustre", "network"),
        ("fuse.sshfs", "network"),
        ("fuse.gcsfuse", "fuse"),
        ("fuse", "fuse"),
        ("ext4", "local"),
        ("tmpfs", "local"),
        ("overlay", "local"),
    ],
)
def test_classify(fstype: str, kind: str) -> None:
    """File-system types map to network, fuse or local."""
    assert classify(fstype) == kind


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


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a mount command, capturing its output."""
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _mount_or_skip(args: list[str]) -> None:
    """Run mount, skipping the test with the reason if it fails."""
    try:
        result = _run(args)
    except FileNotFoundError:
        pytest.skip("the `mount` command is not installed")
    if result.returncode != 0:
        pytest.skip(f"`{' '.join(args)}` failed: {result.stderr.strip()}")


@pytest.fixture
def bind_mount() -> Iterator[BindMount]:
    """Bind-mount src on dst (read-only if asked); unmount everything at teardown."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    mounted: list[Path] = []

    def make(src: Path, dst: Path, readonly: bool) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        _mount_or_skip(["mount", "--bind", str(src), str(dst)])
        mounted.append(dst)
        if readonly:
            _mount_or_skip(["mount", "-o", "remount,bind,ro", str(dst)])
        return dst

    yield make
    for dst in reversed(mounted):
        if _run(["umount", str(dst)]).returncode != 0:
            _run(["umount", "-l", str(dst)])


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
