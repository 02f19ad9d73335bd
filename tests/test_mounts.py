"""Tests of mountproc._mounts: mountinfo parsing, mount lookup, classification, liveness probes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mountproc._errors import MountError
from mountproc._mounts import (
    MountInfo,
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
