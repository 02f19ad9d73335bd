"""Tests of the sshfs test helper in netfs.py: a real sshd on 127.0.0.1 and a real FUSE mount."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.netfs import SshfsMount, mount_entry, sshfs_available, wait_until

REASON = sshfs_available()
pytestmark = [pytest.mark.mount, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

FILES = {
    "a.txt": b"alpha\n",
    "with space.txt": b"a name with a space\n",
    "sub/deep.bin": bytes(range(256)) * 64,
    "fresh/one.txt": b"listed only in the pause test\n",
}
WAIT = 10.0  # seconds any operation that should finish gets before the test fails


class Attempt:
    """A file system call run in a daemon thread, so a blocked call cannot hang the test."""

    def __init__(self, call: Callable[[], object]) -> None:
        """Start ``call`` at once."""
        self.result: object = None
        self.error: OSError | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except OSError as exc:
            self.error = exc

    def finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if the call has returned or raised."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def errno(self, timeout: float = WAIT) -> int:
        """The errno the call failed with (fails the test if it succeeded or hung)."""
        assert self.finished(timeout), f"still blocked after {timeout}s"
        assert self.error is not None, f"expected an OSError, got {self.result!r}"
        return self.error.errno or 0


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A directory with a few files (one with a space in its name) to export."""
    root = tmp_path / "export"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path, with its content."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_mount_shows_export_read_only(tmp_path: Path, export: Path) -> None:
    """The mount shows the exported files byte for byte, is ro sshfs, and refuses writes."""
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work") as m:
        assert _tree(m.mountpoint) == _tree(export) == FILES
        entry = mount_entry(m.mountpoint)
        assert entry is not None
        assert entry.fstype == "fuse.sshfs"
        assert "ro" in entry.mount_options
        assert entry.source == f"root@127.0.0.1:{export}"
        # -o ro is a kernel read-only mount: the VFS refuses before sshfs sees anything
        with pytest.raises(OSError, match="Read-only") as info:
            (m.mountpoint / "new.txt").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError, match="Read-only") as info:
            (m.mountpoint / "a.txt").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError, match="Read-only") as info:
            (m.mountpoint / "newdir").mkdir()
        assert info.value.errno == errno.EROFS
        procs = m.processes()
    assert mount_entry(tmp_path / "mnt") is None
    assert (export / "a.txt").read_bytes() == FILES["a.txt"]
    assert not (export / "new.txt").exists()
    assert [p for p in procs if p.alive()] == []


def test_kill_server_with_reconnect_fails_with_eio(tmp_path: Path, export: Path) -> None:
    """With reconnect and no caches, every access fails with EIO once sshd is killed."""
    options = ["reconnect", "dir_cache=no", "attr_timeout=0", "entry_timeout=0"]
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work", extra_options=options) as m:
        target = m.mountpoint / "with space.txt"
        assert target.read_bytes() == FILES["with space.txt"]
        m.kill_server()
        # observed: EIO at once (sshfs stays mounted and retries ssh, which is refused)
        assert Attempt(target.read_bytes).errno() == errno.EIO
        assert Attempt(lambda: os.stat(target)).errno() == errno.EIO
        assert Attempt(lambda: os.listdir(m.mountpoint / "sub")).errno() == errno.EIO
        assert m.is_mounted()
        assert m.sshfs.poll() is None


def test_kill_server_default_sshfs_gives_up(tmp_path: Path, export: Path) -> None:
    """Without reconnect, sshfs fails the read, then exits by itself and the mount goes away."""
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work") as m:
        target = m.mountpoint / "a.txt"
        assert target.read_bytes() == FILES["a.txt"]
        m.kill_server()
        # observed over 20 runs, a race with sshfs noticing the EOF and exiting: EIO 10 times,
        # ENOENT (the bare directory, already unmounted) 9 times, ECONNABORTED once; and in CI
        # once ENOTCONN (sshfs gone, the mount not yet removed)
        lost = (errno.EIO, errno.ECONNABORTED, errno.ENOENT, errno.ENOTCONN)
        assert Attempt(target.read_bytes).errno() in lost
        wait_until(lambda: m.sshfs.poll() is not None, WAIT, "sshfs exited")
        wait_until(lambda: not m.is_mounted(), WAIT, "sshfs unmounted")
        assert m.sshfs.returncode != 0


def test_kill_client_gives_enotconn(tmp_path: Path, export: Path) -> None:
    """Once sshfs is killed the mount stays, and listdir, open and stat fail with ENOTCONN."""
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work") as m:
        assert os.listdir(m.mountpoint)
        m.kill_client()
        assert m.is_mounted()
        assert Attempt(lambda: os.listdir(m.mountpoint)).errno() == errno.ENOTCONN
        assert Attempt((m.mountpoint / "a.txt").read_bytes).errno() == errno.ENOTCONN

        # stat of the root may be answered from the kernel's attribute cache for attr_timeout
        # (1 s by default); after that it reaches the aborted connection, which fails at once
        wait_until(lambda: _stat_errno(m) != 0, WAIT, "stat of the mountpoint failed")
        assert _stat_errno(m) == errno.ENOTCONN


def _stat_errno(m: SshfsMount) -> int:
    """The errno of stat on the mountpoint, or 0 if it succeeds."""
    try:
        os.stat(m.mountpoint)
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_kill_client_without_attr_cache_stat_fails_at_once(tmp_path: Path, export: Path) -> None:
    """With attr_timeout=0 even the first stat after killing sshfs fails with ENOTCONN."""
    options = ["attr_timeout=0"]
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work", extra_options=options) as m:
        os.stat(m.mountpoint)
        m.kill_client()
        assert Attempt(lambda: os.stat(m.mountpoint)).errno() == errno.ENOTCONN


def test_paused_client_blocks_until_resumed(tmp_path: Path, export: Path) -> None:
    """While sshfs is stopped, listing an uncached directory blocks; it completes on SIGCONT."""
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work") as m:
        m.pause_client()
        listing = Attempt(lambda: os.listdir(m.mountpoint / "fresh"))
        assert not listing.finished(2.0), "listdir returned although sshfs is stopped"
        m.resume_client()
        assert listing.finished(WAIT)
        assert listing.error is None
        assert listing.result == ["one.txt"]


class BodyFailed(Exception):
    """Raised inside the ``with`` block to check that cleanup runs anyway."""


@pytest.mark.parametrize(
    "action", ["nothing", "kill_server", "kill_client", "pause", "pause_with_blocked_reader"]
)
def test_cleanup_after_failing_body(tmp_path: Path, export: Path, action: str) -> None:
    """Whatever the test did and even if it raised, no mount and no process is left behind."""
    reader: Attempt | None = None
    with (  # noqa: PT012 - the whole block is what is tested
        pytest.raises(BodyFailed),
        SshfsMount.start(export, tmp_path / "mnt", tmp_path / "work") as m,
    ):
        procs = m.processes()
        pids = {p.pid for p in procs}
        assert {m.sshd.pid, m.sshfs_pid()} <= pids
        # listener, session, sshfs, its ssh client (the session's privilege-separated child
        # may not be forked yet: seen once in CI with 3)
        assert len(procs) >= 3, procs
        if action == "kill_server":
            m.kill_server()
        elif action == "kill_client":
            m.kill_client()
        elif action.startswith("pause"):
            m.pause_client()
        if action == "pause_with_blocked_reader":
            reader = Attempt(lambda: os.listdir(m.mountpoint / "sub"))
            assert not reader.finished(0.5)
        procs = m.processes()
        raise BodyFailed
    assert mount_entry(tmp_path / "mnt") is None
    assert [p for p in procs if p.alive()] == []
    assert m.sshd.returncode is not None
    assert m.sshfs.returncode is not None
    if reader is not None:
        assert reader.finished(WAIT), "the blocked reader never came back"
