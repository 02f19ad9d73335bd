"""Tests of _mounts.table: mountinfo parsing, mount lookup, classification, liveness probes."""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mountproc._errors import MountError
from mountproc._mounts.table import (
    MountInfo,
    MountNotAliveError,
    call_with_timeout,
    classify,
    errno_text,
    find_mount,
    find_oserror,
    is_readonly,
    lookup_unique,
    parse_mountinfo,
    probe_alive,
    read_mount_table,
    service,
    sick_error,
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


# --- service -----------------------------------------------------------------------------------


def _nfs(fstype: str, source: str, *super_options: str) -> MountInfo:
    """A network mount at /mnt/data with the given source and superblock options."""
    return MountInfo(9, 1, "/", "/mnt/data", ("ro",), fstype, source, ("ro", *super_options))


def test_service_names_efs_by_its_host() -> None:
    """An NFS mount of an EFS file system's DNS name is aws-efs."""
    efs = _nfs("nfs4", "fs-123.efs.eu-west-1.amazonaws.com:/", "vers=4.1", "addr=10.0.0.5")
    assert service(efs) == "aws-efs"


def test_service_names_efs_over_the_local_tls_tunnel() -> None:
    """EFS mounted with tls: NFS from 127.0.0.1 on a port of its own (amazon-efs-utils' stunnel)."""
    tunnel = _nfs("nfs4", "127.0.0.1:/", "vers=4.1", "port=20059")
    assert service(tunnel) == "nfs over a local TLS tunnel (aws-efs with tls)"
    assert service(_nfs("nfs4", "localhost:/", "port=20059")) == service(tunnel)


@pytest.mark.parametrize(
    "mount",
    [
        _nfs("nfs", "nas.example.com:/export", "vers=3"),
        _nfs("nfs4", "127.0.0.1:/", "vers=4.1"),  # local NFS, but no tunnel port
        _nfs("nfs4", "fs-123.efs.eu-west-1.example.com:/"),
    ],
)
def test_service_is_none_for_plain_nfs(mount: MountInfo) -> None:
    """An NFS mount that is neither EFS nor tunnelled names no service."""
    assert service(mount) is None


@pytest.mark.parametrize(
    "mount",
    [
        _nfs("fuse.sshfs", "fs-123.efs.eu-west-1.amazonaws.com:/"),
        _nfs("cifs", "127.0.0.1:/", "port=20059"),
        _nfs("ext4", "/dev/vda"),
    ],
)
def test_service_is_none_for_other_file_systems(mount: MountInfo) -> None:
    """Only NFS mounts are named, whatever their source looks like."""
    assert service(mount) is None


# --- errno_text, find_oserror, sick_error ------------------------------------------------------


def test_errno_text() -> None:
    """The errno's symbolic name, then its text; only the text when the errno is unknown."""
    gone = OSError(errno.ENOTCONN, "Transport endpoint is not connected", "/mnt/x")
    assert errno_text(gone) == "ENOTCONN: Transport endpoint is not connected"
    assert errno_text(OSError(errno.EIO, os.strerror(errno.EIO))) == "EIO: Input/output error"
    assert errno_text(OSError("no errno at all")) == "no errno at all"
    assert errno_text(OSError(99999, "made up")) == "made up"


def _wrapped(inner: BaseException, *, explicit: bool) -> BaseException:
    """``inner`` under two wrappers, chained by ``raise ... from`` (``__cause__``) or by raising
    inside ``except`` (``__context__``)."""
    exc = inner
    for wrapper in (RuntimeError("reading failed"), ValueError("transform failed")):
        try:
            try:
                raise exc
            except BaseException as caught:
                if explicit:
                    raise wrapper from caught
                raise wrapper  # noqa: B904
        except BaseException as raised:
            exc = raised
    return exc


@pytest.mark.parametrize("explicit", [True, False], ids=["cause", "context"])
def test_find_oserror_follows_the_chain(explicit: bool) -> None:
    """The OSError is found under two wrappers, through __cause__ or __context__."""
    stale = OSError(errno.ESTALE, "Stale file handle")
    outer = _wrapped(stale, explicit=explicit)
    assert (outer.__cause__ is not None) is explicit
    assert find_oserror(outer, (errno.ESTALE,)) is stale
    assert sick_error(outer) is stale
    assert find_oserror(outer, (errno.ENOSPC,)) is None


def test_find_oserror_takes_the_outermost_match() -> None:
    """With several matching errors in the chain, the nearest one is returned."""
    inner = OSError(errno.EIO, "I/O error")
    outer = OSError(errno.ENOTCONN, "gone")
    outer.__cause__ = inner
    assert sick_error(outer) is outer
    assert find_oserror(outer, (errno.EIO,)) is inner


def test_sick_error_is_none_for_healthy_failures() -> None:
    """A missing file, a full disk, a plain exception or nothing are not a sick mount."""
    missing = _wrapped(FileNotFoundError(errno.ENOENT, "No such file"), explicit=True)
    assert sick_error(missing) is None
    assert find_oserror(missing, (errno.ENOENT,)) is not None
    assert sick_error(OSError(errno.ENOSPC, "No space left on device")) is None
    assert sick_error(ValueError("bad pixel")) is None
    assert sick_error(None) is None


def test_find_oserror_stops_on_a_cycle() -> None:
    """A chain that loops back on itself ends the search instead of hanging."""
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert sick_error(first) is None


# --- call_with_timeout -------------------------------------------------------------------------


def test_call_with_timeout_returns_the_value() -> None:
    """A function that returns in time gives its value."""
    assert call_with_timeout(lambda: 42, 5.0) == 42


def test_call_with_timeout_reraises_the_error() -> None:
    """A function that raises in time raises that very exception in the caller."""
    error = OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def fail() -> None:
        raise error

    with pytest.raises(OSError, match="not connected") as info:
        call_with_timeout(fail, 5.0)
    assert info.value is error


def test_call_with_timeout_abandons_a_blocked_call() -> None:
    """A blocked function raises TimeoutError after about the timeout; its thread is left."""
    release = threading.Event()
    name = f"blocked-{uuid.uuid4().hex}"
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"no answer within 0\.3 s"):
            call_with_timeout(release.wait, 0.3, name=name)
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 1.0
        assert name in {t.name for t in threading.enumerate()}  # abandoned, not stopped
    finally:
        release.set()


def test_call_with_timeout_polls_while_waiting() -> None:
    """``poll`` runs while the function is blocked; what it raises ends the wait at once."""
    release = threading.Event()
    calls: list[float] = []

    def poll() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            raise RuntimeError("source lost")

    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="source lost"):
            call_with_timeout(release.wait, 30.0, poll=poll)
    finally:
        release.set()
    assert len(calls) == 3
    assert time.monotonic() - started < 2.0


def test_call_with_timeout_returns_once_poll_lets_the_call_finish() -> None:
    """A poll that does not raise leaves the call to return its value."""
    release = threading.Event()
    calls: list[int] = []

    def poll() -> None:
        calls.append(1)
        if len(calls) == 2:
            release.set()

    assert call_with_timeout(lambda: release.wait(10) and "done", 10.0, poll=poll) == "done"
    assert len(calls) == 2


# --- probe_alive and lookup_unique -------------------------------------------------------------


def test_probe_alive_passes_on_a_live_directory(tmp_path: Path) -> None:
    """A local directory answers at once; the probe leaves nothing behind."""
    (tmp_path / "a.jpg").write_bytes(b"x")
    probe_alive(tmp_path, 5.0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_probe_alive_on_a_missing_directory_raises_file_not_found(tmp_path: Path) -> None:
    """A missing path is not a sick mount: the FileNotFoundError itself reaches the caller."""
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError) as info:
        probe_alive(missing, 5.0)
    assert not isinstance(info.value, MountNotAliveError)
    assert info.value.filename == str(missing)


def test_probe_alive_names_a_sick_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup answered with ENOTCONN is a dead mount, named with its role and errno (the
    error is injected: a dead FUSE daemon is covered by the sshfs tests)."""

    def dead(path: object) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    monkeypatch.setattr("mountproc._mounts.table.lookup_unique", dead)
    with pytest.raises(MountNotAliveError, match="ENOTCONN") as info:
        probe_alive(tmp_path, 5.0, role="scratch")
    assert str(info.value).startswith(f"scratch {tmp_path} is not answering")


def test_probe_alive_times_out_on_a_hung_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup that never answers is a hung mount after the timeout (the hang is injected)."""
    release = threading.Event()
    monkeypatch.setattr("mountproc._mounts.table.lookup_unique", lambda path: release.wait())
    started = time.monotonic()
    try:
        with pytest.raises(MountNotAliveError, match=r"no answer within 0\.2 s"):
            probe_alive(tmp_path, 0.2)
    finally:
        release.set()
    assert time.monotonic() - started < 1.5


def test_lookup_unique(tmp_path: Path) -> None:
    """A name that cannot exist is looked up without creating anything; under a file it fails."""
    lookup_unique(tmp_path)
    lookup_unique(tmp_path / "missing")  # ENOENT is the healthy answer, for the parent too
    assert list(tmp_path.iterdir()) == []
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(NotADirectoryError):
        lookup_unique(file)
