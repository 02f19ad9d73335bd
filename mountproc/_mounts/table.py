"""The mount table: parse /proc/self/mountinfo, find and classify the mount holding a path, and
probe whether a mount is alive without ever blocking the caller."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from mountproc._errors import MountError

logger = logging.getLogger(__name__)

MountKind = Literal["network", "fuse", "local"]
"""How a file system is reached: over the network, through FUSE, or on a local device."""

MOUNTINFO_PATH = "/proc/self/mountinfo"
"""Where the kernel publishes the mount table of the calling process."""

_NETWORK_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "afs",
        "beegfs",
        "gpfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.ceph-fuse",
    }
)
SICK_ERRNOS = frozenset(
    {
        errno.ENOTCONN,  # FUSE (sshfs) whose daemon or connection is gone
        errno.ESTALE,  # NFS handle invalidated by the server
        errno.EIO,  # soft NFS mount that timed out; a failing disk
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ECONNRESET,
        errno.ECONNABORTED,
    }
)
"""Errors that say the mount (not the file) is in trouble: retried, then the mount is probed."""

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Errors that say a disk (scratch or outputs) is full: they stop the run, never fail a file."""

T = TypeVar("T")

POLL_STEP_S = 0.2

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_SEPARATOR_FROM = 6


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo, with escapes decoded."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


class MountNotAliveError(MountError):
    """A mount did not answer in time or answered with an error of a dead mount."""


def errno_text(exc: OSError) -> str:
    """``ENOTCONN: Transport endpoint is not connected`` for an OSError."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{name}: {text}" if name else text


def find_oserror(exc: BaseException | None, errnos: Collection[int]) -> OSError | None:
    """The first OSError with one of ``errnos`` in ``exc`` or its causes, or None."""
    for _ in range(8):  # causes chain; bounded against cycles
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in errnos:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def sick_error(exc: BaseException | None) -> OSError | None:
    """The OSError of a dead or flaky mount in ``exc`` or its causes, or None."""
    return find_oserror(exc, SICK_ERRNOS)


def call_with_timeout(
    fn: Callable[[], T],
    timeout: float,
    name: str = "mountproc-probe",
    poll: Callable[[], None] | None = None,
) -> T:
    """Run ``fn`` in a daemon thread and return its result; raise TimeoutError if it has not
    returned within ``timeout`` seconds, or what ``poll`` raises (called while waiting). A call
    blocked on a hard mount cannot be cancelled, so the thread is left behind; it never holds a
    lock of ours."""
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {timeout:g} s")
        if poll is not None:
            thread.join(min(left, POLL_STEP_S))
        else:
            thread.join(None if math.isinf(left) else left)
        if poll is not None and thread.is_alive():
            poll()
    if errors:
        raise errors[0]
    return box[0]


def not_alive(role: str, path: str | os.PathLike[str], detail: str) -> MountNotAliveError:
    return MountNotAliveError(
        f"{role} {show(path)} is not answering ({detail}): its mount looks dead or hung "
        "(server unreachable, stale handle, FUSE daemon gone); check the server and the "
        "network, remount it, then run again"
    )


def lookup_unique(path: str | os.PathLike[str]) -> None:
    """Look up a name that cannot exist under ``path``: no cache can answer that, so the server
    must (FileNotFoundError is the healthy answer; a dead mount raises ENOTCONN, EIO...)."""
    try:
        os.lstat(os.path.join(path, f".mountproc-probe-{uuid.uuid4().hex}"))
    except FileNotFoundError:
        return


def probe_alive(path: str | os.PathLike[str], timeout: float, role: str = "source") -> None:
    """Raise MountNotAliveError unless ``path`` can be stat'ed and listed, and its server
    answers a lookup, within ``timeout``."""

    def probe() -> None:
        os.stat(path)
        with os.scandir(path) as entries:
            next(entries, None)
        lookup_unique(path)

    try:
        call_with_timeout(probe, timeout)
    except TimeoutError:
        raise not_alive(role, path, f"no answer within {timeout:g} s") from None
    except OSError as exc:
        if exc.errno not in SICK_ERRNOS:
            raise
        raise not_alive(role, path, errno_text(exc)) from None


def _unescape(field: str) -> str:
    """Decode the kernel's octal escapes (space, tab, newline, backslash) in one field."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def show(path: str | os.PathLike[str]) -> str:
    """Render a path for a one-line message, escaping control characters such as newlines."""
    text = os.fspath(path)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _options(field: str) -> tuple[str, ...]:
    """Split a comma-separated option field, dropping empty items."""
    return tuple(opt for opt in field.split(",") if opt)


def _parse_line(line: str, lineno: int) -> MountInfo:
    """Parse one mountinfo line; raise MountError if it has no ' - ' separator or too few fields."""
    fields = line.split(" ")
    try:
        sep = fields.index("-", _SEPARATOR_FROM)
        return MountInfo(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            root=_unescape(fields[3]),
            mount_point=_unescape(fields[4]),
            mount_options=_options(fields[5]),
            fstype=fields[sep + 1],
            source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
            super_options=_options(fields[sep + 3]) if len(fields) > sep + 3 else (),
        )
    except (ValueError, IndexError):
        raise MountError(
            f"mountinfo line {lineno} is malformed ({line!r}): expected the "
            "/proc/self/mountinfo format of Linux; read the table from /proc/self/mountinfo"
        ) from None


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse the text of /proc/<pid>/mountinfo into entries, in table order."""
    return [
        _parse_line(line, lineno)
        for lineno, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def read_mount_table(path: str = MOUNTINFO_PATH) -> list[MountInfo]:
    """Read and parse a mountinfo file (the calling process's mount table by default)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise MountError(
            f"mount table {show(path)} cannot be read ({exc.strerror or exc}): "
            "mountproc needs Linux with /proc mounted"
        ) from None
    return parse_mountinfo(text)


def _contains(mount_point: str, realpath: str) -> bool:
    """Tell whether realpath lies at or under mount_point, comparing whole components."""
    if mount_point == "/":
        return realpath.startswith("/")
    return realpath == mount_point or realpath.startswith(mount_point.rstrip("/") + "/")


def find_mount(path: Path, mounts: Sequence[MountInfo]) -> MountInfo:
    """Return the mount holding realpath(path): longest mount point wins, the last on ties."""
    realpath = os.path.realpath(path)
    best: MountInfo | None = None
    for mount in mounts:
        if _contains(mount.mount_point, realpath) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    if best is None:
        raise MountError(
            f"path {show(path)} is on no mount in the mount table: "
            "pass the mount table of this process (/proc/self/mountinfo)"
        )
    return best


def statvfs_readonly(path: str | os.PathLike[str]) -> bool:
    """Tell whether statvfs reports path as on a read-only mount; False if it cannot be asked."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as exc:
        logger.debug("statvfs(%s) failed: %s", show(path), exc)
        return False


def is_readonly(mount: MountInfo, path: str | os.PathLike[str]) -> bool:
    """Tell whether path is read-only: per-mount ro, superblock ro, or statvfs ST_RDONLY."""
    return "ro" in mount.mount_options or "ro" in mount.super_options or statvfs_readonly(path)


def classify(fstype: str) -> MountKind:
    """Classify a file-system type as "network", "fuse" or "local"."""
    if fstype in _NETWORK_FSTYPES:
        return "network"
    if fstype in ("fuse", "fuseblk") or fstype.startswith("fuse."):
        return "fuse"
    return "local"


def service(mount: MountInfo) -> str | None:
    """Name the managed service behind a network mount when its table entry tells."""
    host = mount.source.split(":", 1)[0]
    if not mount.fstype.startswith("nfs"):
        return None
    if ".efs." in host and host.endswith(".amazonaws.com"):
        return "aws-efs"
    tunnelled = any(o.startswith("port=") for o in mount.super_options)
    if host in ("127.0.0.1", "localhost") and tunnelled:
        # amazon-efs-utils' TLS mounts go through a local stunnel on a port of its own
        return "nfs over a local TLS tunnel (aws-efs with tls)"
    return None


_STUCK: list[str] = []


def note_stuck(what: str) -> None:
    """Remember that a process or thread of this run is blocked on a hung mount: it cannot be
    stopped until the mount answers, so the process must exit without waiting for it."""
    _STUCK.append(what)


def left_stuck() -> bool:
    """True once something was noted stuck: exit with ``os._exit`` then, since interpreter
    shutdown would wait for it forever."""
    return bool(_STUCK)


DEFAULT_TIMEOUT_S = 30.0


def within(fn: Callable[[], T], timeout: float, role: str, path: Path) -> T:
    """Run a check that touches ``path`` with a time limit: a hung mount fails, never blocks."""
    try:
        return call_with_timeout(fn, timeout)
    except TimeoutError:
        raise not_alive(role, path, f"no answer within {timeout:g} s") from None
