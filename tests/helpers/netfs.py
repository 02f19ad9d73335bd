"""A real network file system for tests: a local directory exported by sshfs over sshd on 127.0.0.1.

Import it as ``from helpers.netfs import SshfsMount, sshfs_available`` (pytest puts ``tests/`` on
``sys.path``, as for ``conftest``). Observed with OpenSSH 9.2, sshfs 3.7.3, FUSE 3.14:

* ``-o ro`` gives a kernel read-only mount: every write fails with EROFS.
* ``kill_server()`` with default options: sshfs fails the next request (EIO or ECONNABORTED),
  then exits by itself (status 1) and the mount disappears, so a read soon after gives EIO,
  ECONNABORTED or ENOENT, as the race goes. With ``extra_options=["reconnect"]`` sshfs stays
  mounted and every request that reaches it fails with EIO (it retries ssh, which is refused).
* ``kill_client()``: every request that reaches the kernel fails with ENOTCONN; cached
  attributes still answer ``stat`` until ``attr_timeout`` (1 s by default) runs out.
* Caching: sshfs answers getattr and readdir from its own cache (``dir_cache=no`` turns that
  off) and the kernel caches attributes and names (``attr_timeout=0``, ``entry_timeout=0``).
  Only with ``dir_cache=no`` and ``attr_timeout=0`` does every ``stat`` and ``listdir`` reach
  the server. Opening a file always reaches sshfs.
* Latency: ``extra_options=["ProxyCommand=python benchmarks/relay.py --delay-ms 0.5 %h %p"]``
  makes ssh reach sshd through a relay that holds every byte 0.5 ms each way (the relay is a
  child of sshfs's ssh client, stopped with it). An option's value must hold no comma.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
PORT_ATTEMPTS = 3


def _tool(name: str) -> str | None:
    """The absolute path of a program on PATH or in the usual sbin directories, or None."""
    return shutil.which(name, path=SBIN_PATH)


def sshfs_available() -> str | None:
    """None if this machine can run sshd and mount sshfs, else a reason for ``pytest.skip``."""
    if os.geteuid() != 0:
        return "sshfs mounts need root (sshd runs as root, FUSE mounts by root)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    os.close(fd)
    missing = [t for t in ("sshd", "sshfs", "ssh", "ssh-keygen") if _tool(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if _tool("fusermount3") is None and _tool("umount") is None:
        return "neither fusermount3 nor umount is installed"
    return None


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(POLL_INTERVAL)


# --- /proc/self/mountinfo ------------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    """The fields of one /proc/self/mountinfo line that these tests need."""

    mount_point: str
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    r"""Decode the octal escapes (``\040`` and so on) the kernel writes in mountinfo fields."""
    raw = os.fsencode(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("\\") and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_entries() -> list[MountEntry]:
    """Every mount of this process's mount namespace, in table order."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_point=_unescape(fields[4]),
                    mount_options=tuple(fields[5].split(",")),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    super_options=tuple(fields[sep + 3].split(",")),
                )
            )
    return entries


def mount_entry(mountpoint: Path) -> MountEntry | None:
    """The topmost mount on ``mountpoint`` (resolved), or None if nothing is mounted there."""
    target = os.path.realpath(mountpoint)
    found = [e for e in mount_entries() if e.mount_point == target]
    return found[-1] if found else None


# --- processes, known by pid and start time so that a reused pid is never mistaken -------------


def _read_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state letter, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()  # rest[0] is field 3 of proc_pid_stat(5)
    return int(rest[1]), rest[0].decode(), int(rest[19])


@dataclass(frozen=True)
class Proc:
    """A process this helper started, directly or not: its pid and its start time."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        """The process that has this pid now, or None."""
        st = _read_stat(pid)
        return None if st is None else cls(pid, st[2])

    def state(self) -> str:
        """This process's state letter (R, S, T, Z, ...), or "" once it is gone."""
        st = _read_stat(self.pid)
        return st[1] if st is not None and st[2] == self.start else ""

    def alive(self) -> bool:
        """True while this very process exists and is not a zombie."""
        return self.state() not in ("", "Z", "X")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to this very process if it is still alive."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _all_processes() -> Iterator[int]:
    """The pids in /proc."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def descendants(pid: int) -> list[Proc]:
    """Every living descendant of ``pid`` (children, grandchildren, ...), found in /proc."""
    children: dict[int, list[int]] = {}
    for child in _all_processes():
        st = _read_stat(child)
        if st is not None:
            children.setdefault(st[0], []).append(child)
    found: list[Proc] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        proc = Proc.of(child)
        if proc is not None:
            found.append(proc)
            todo.extend(children.get(child, []))
    return found


def _kill_tree(root: Proc) -> None:
    """SIGSTOP ``root`` and its descendants until no new one appears, then SIGKILL them all."""
    frozen: list[Proc] = []
    new = [root]
    while new:
        for proc in new:
            proc.signal(signal.SIGSTOP)
        frozen.extend(new)
        new = [p for p in descendants(root.pid) if p not in frozen]
    for proc in reversed(frozen):
        proc.signal(signal.SIGKILL)


def _wait_dead(procs: Sequence[Proc], what: str) -> None:
    """Wait until none of ``procs`` is alive."""
    wait_until(lambda: not any(p.alive() for p in procs), STOP_TIMEOUT, what)


# --- small helpers -------------------------------------------------------------------------------


def _tail(path: Path, limit: int = 2000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _banner_received(port: int) -> bool:
    """True once something on 127.0.0.1:port accepts a connection and says ``SSH-``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def _quote(path: Path) -> str:
    """A path as one sshd_config argument."""
    text = str(path)
    if any(c in text for c in '"%\n'):
        raise ValueError(f"cannot use {text!r} in an sshd_config")
    return f'"{text}"'


# --- the mount -----------------------------------------------------------------------------------


class SshfsMount:
    """An sshd on 127.0.0.1 and an sshfs mount of one directory through it; see ``start``."""

    def __init__(self, export_dir: Path, mountpoint: Path, workdir: Path) -> None:
        """Keep the paths; ``start`` does the work."""
        self.export_dir = Path(os.path.realpath(export_dir))
        self.mountpoint = Path(os.path.realpath(mountpoint))
        self.workdir = Path(os.path.realpath(workdir))
        self.host_key = self.workdir / "host_ed25519"
        self.client_key = self.workdir / "client_ed25519"
        self.port = 0
        self._sshd: subprocess.Popen[bytes] | None = None
        self._sshfs: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._server_procs: list[Proc] = []
        self._client_procs: list[Proc] = []
        self._paused = False

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        export_dir: Path,
        mountpoint: Path,
        workdir: Path,
        readonly: bool = True,
        extra_options: Sequence[str] = (),
    ) -> Iterator[SshfsMount]:
        """Serve ``export_dir`` by sshd and mount it on ``mountpoint``; undo everything on exit.

        ``workdir`` (keys, config, logs) must belong to this mount alone. Each of
        ``extra_options`` goes to sshfs as ``-o OPTION``, e.g. ``"reconnect"``, ``"dir_cache=no"``.
        """
        mount = cls(export_dir, mountpoint, workdir)
        try:
            mount._start_sshd()
            mount._mount(readonly, extra_options)
            yield mount
        finally:
            mount.close()

    # -- what tests use

    @property
    def sshd(self) -> subprocess.Popen[bytes]:
        """The listening ``sshd -D`` process."""
        assert self._sshd is not None, "sshd was not started"
        return self._sshd

    @property
    def sshfs(self) -> subprocess.Popen[bytes]:
        """The sshfs daemon, run in the foreground (``-f``) so that this helper owns it."""
        assert self._sshfs is not None, "sshfs was not started"
        return self._sshfs

    def sshfs_pid(self) -> int:
        """The pid of the sshfs daemon."""
        return self.sshfs.pid

    def processes(self) -> list[Proc]:
        """Every process started for this mount so far: sshd, its sessions, sshfs, its ssh."""
        self._remember()
        return [*self._server_procs, *self._client_procs]

    def is_mounted(self) -> bool:
        """True while an sshfs mount (live or dead) is on the mountpoint."""
        entry = mount_entry(self.mountpoint)
        return entry is not None and entry.fstype == "fuse.sshfs"

    def kill_server(self) -> None:
        """SIGKILL sshd and every session process it forked, so that the connection dies."""
        self._remember()
        if self._sshd is not None and self._sshd.poll() is None:
            root = Proc.of(self._sshd.pid)
            if root is not None:
                _kill_tree(root)
            self._sshd.wait(timeout=STOP_TIMEOUT)
        for proc in self._server_procs:  # sessions a listener that died before left behind
            proc.signal(signal.SIGKILL)
        _wait_dead(self._server_procs, "every sshd process was gone")

    def kill_client(self) -> None:
        """SIGKILL sshfs: the mount stays, and requests reaching the kernel fail with ENOTCONN."""
        self._remember()
        if self.sshfs.poll() is None:
            self.sshfs.kill()
            self.sshfs.wait(timeout=STOP_TIMEOUT)
        self._paused = False

    def pause_client(self) -> None:
        """SIGSTOP sshfs: requests on the mount block, like a hard NFS mount whose server hangs."""
        sshfs = Proc.of(self.sshfs_pid())
        if sshfs is None or self.sshfs.poll() is not None:
            raise RuntimeError("sshfs is not running")
        self._paused = True
        sshfs.signal(signal.SIGSTOP)
        wait_until(lambda: sshfs.state() == "T", STOP_TIMEOUT, "sshfs was stopped")

    def resume_client(self) -> None:
        """SIGCONT sshfs: the blocked requests go on."""
        if self.sshfs.poll() is None:
            os.kill(self.sshfs.pid, signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Unmount, stop sshfs, sshd and all their children, and wait for them; idempotent."""
        self._remember()
        errors: list[str] = []
        if self._paused:
            self.resume_client()
        self._unmount(errors)
        if self._sshfs is not None and self._sshfs.poll() is None:
            self._sshfs.terminate()
            try:
                self._sshfs.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._sshfs.kill()
                self._sshfs.wait(timeout=STOP_TIMEOUT)
        try:
            self.kill_server()
        except (TimeoutError, subprocess.TimeoutExpired) as exc:
            errors.append(f"sshd: {exc}")
        self._remember()
        for proc in self._client_procs:  # the ssh clients of sshfs, if still there
            proc.signal(signal.SIGKILL)
        try:
            _wait_dead(self.processes(), "every sshd and sshfs process was gone")
        except TimeoutError as exc:
            errors.append(str(exc))
        for log in self._logs:
            log.close()
        self._logs.clear()
        if errors:
            raise RuntimeError(f"cleaning up the sshfs mount on {self.mountpoint}: {errors}")

    # -- internals

    def _start_sshd(self) -> None:
        """Make keys and a config in workdir, start sshd on a free port, wait for its banner."""
        keygen = _tool("ssh-keygen")
        sshd = _tool("sshd")
        if keygen is None or sshd is None:
            raise RuntimeError(f"cannot start sshd: {sshfs_available()}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "netfs", "-f", str(key)],
                    check=True,
                    capture_output=True,
                    timeout=STOP_TIMEOUT,
                )
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for _ in range(PORT_ATTEMPTS):
            self.port = _free_port()
            config = self._write_sshd_config()
            log_path = self.workdir / f"sshd-{self.port}.log"
            log = open(log_path, "wb")  # noqa: SIM115 - closed by close()
            self._logs.append(log)
            proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._sshd = proc
            port = self.port

            def up(proc: subprocess.Popen[bytes] = proc, port: int = port) -> bool:
                return proc.poll() is not None or _banner_received(port)

            try:
                wait_until(up, START_TIMEOUT, f"sshd listened on 127.0.0.1:{port}")
            except TimeoutError:
                raise TimeoutError(f"sshd did not start: {_tail(log_path)}") from None
            if proc.poll() is None:
                self._remember()
                return
            if "Address already in use" not in _tail(log_path):
                break
        raise RuntimeError(f"sshd exited with status {proc.returncode}: {_tail(log_path)}")

    def _write_sshd_config(self) -> Path:
        """A minimal sshd_config: root by key only, internal sftp, on 127.0.0.1 only."""
        config = self.workdir / "sshd_config"
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {_quote(self.host_key)}",
            f"AuthorizedKeysFile {_quote(self.client_key.with_suffix('.pub'))}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            f"PidFile {_quote(self.workdir / 'sshd.pid')}",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
        ]
        config.write_text("\n".join(lines) + "\n")
        return config

    def _mount(self, readonly: bool, extra_options: Sequence[str]) -> None:
        """Run sshfs in the foreground and wait until its mount is in /proc/self/mountinfo."""
        sshfs = _tool("sshfs")
        if sshfs is None:
            raise RuntimeError(f"cannot mount: {sshfs_available()}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        options = [
            *(["ro"] if readonly else []),
            f"IdentityFile={self.client_key}",
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            f"port={self.port}",
            "ServerAliveInterval=1",
            "ServerAliveCountMax=3",
            *extra_options,
        ]
        args = [sshfs, "-f", "-F", "/dev/null"]  # no ~/.ssh/config
        for option in options:
            args += ["-o", option]
        args += [f"root@127.0.0.1:{self.export_dir}", str(self.mountpoint)]
        log_path = self.workdir / "sshfs.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by close()
        self._logs.append(log)
        self._sshfs = proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: proc.poll() is not None or self.is_mounted(),
                START_TIMEOUT,
                f"sshfs mounted {self.mountpoint}",
            )
        except TimeoutError:
            raise TimeoutError(f"sshfs did not mount: {_tail(log_path)}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"sshfs exited with status {proc.returncode}: {_tail(log_path)}")
        self._remember()

    def _unmount(self, errors: list[str]) -> None:
        """Lazily unmount the mountpoint: that works on a dead or stopped sshfs too."""
        for cmd in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
            tool = _tool(cmd[0])
            if not self.is_mounted() or tool is None:
                continue
            result = subprocess.run(
                [tool, *cmd[1:], str(self.mountpoint)],
                capture_output=True,
                text=True,
                timeout=STOP_TIMEOUT,
                check=False,
            )
            # sshfs unmounts by itself once its server is gone: a mount that vanished between
            # the check and the command (EINVAL) is no failure of the clean-up
            if result.returncode != 0 and self.is_mounted():
                errors.append(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
        if self.is_mounted():
            errors.append(f"{self.mountpoint} is still mounted")

    def _remember(self) -> None:
        """Note every living process of the sshd and the sshfs side, to clean them all up."""
        for popen, seen in ((self._sshd, self._server_procs), (self._sshfs, self._client_procs)):
            found: list[Proc] = []
            if popen is not None and popen.poll() is None:
                root = Proc.of(popen.pid)
                found = [root, *descendants(popen.pid)] if root is not None else []
            if popen is not None and popen is self._sshfs:
                found += self._ssh_clients()
            seen.extend(p for p in found if p not in seen)

    def _ssh_clients(self) -> list[Proc]:
        """The ssh clients of sshfs (it double-forks them, so they are not its descendants),
        and their children: a ``ProxyCommand`` such as ``benchmarks/relay.py``."""
        wanted = {f"-oIdentityFile={self.client_key}".encode(), f"-oport={self.port}".encode()}
        found = []
        for pid in _all_processes():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = set(f.read().split(b"\0"))
            except OSError:
                continue
            proc = Proc.of(pid)
            if wanted <= args and proc is not None:
                found += [proc, *descendants(pid)]
        return found
