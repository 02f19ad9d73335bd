"""The mount contract: parse /proc/self/mountinfo and preflight source, scratch and outputs dirs."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_MIN_FIELDS = 7  # six fixed fields before the optional ones, then the " - " separator
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


@dataclass(frozen=True)
class MountReport:
    """What the preflight found out about a source directory and the mount holding it."""

    path: Path
    realpath: str
    mount_point: str
    fstype: str
    source: str
    kind: MountKind
    options: tuple[str, ...]
    readonly: bool
    is_mount_point: bool
    on_mount: bool

    def as_dict(self) -> dict[str, object]:
        """Return the report as JSON-serialisable data for the run summary."""
        return {
            "path": str(self.path),
            "realpath": self.realpath,
            "mount_point": self.mount_point,
            "fstype": self.fstype,
            "source": self.source,
            "kind": self.kind,
            "options": list(self.options),
            "readonly": self.readonly,
            "is_mount_point": self.is_mount_point,
            "on_mount": self.on_mount,
        }


def _unescape(field: str) -> str:
    """Decode the kernel's octal escapes (space, tab, newline, backslash) in one field."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _show(path: str | os.PathLike[str]) -> str:
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
            f"mount table {_show(path)} cannot be read ({exc.strerror or exc}): "
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
            f"path {_show(path)} is on no mount in the mount table: "
            "pass the mount table of this process (/proc/self/mountinfo)"
        )
    return best


def _statvfs_readonly(path: str | os.PathLike[str]) -> bool:
    """Tell whether statvfs reports path as on a read-only mount; False if it cannot be asked."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as exc:
        logger.debug("statvfs(%s) failed: %s", _show(path), exc)
        return False


def is_readonly(mount: MountInfo, path: str | os.PathLike[str]) -> bool:
    """Tell whether path is read-only: per-mount ro, superblock ro, or statvfs ST_RDONLY."""
    return "ro" in mount.mount_options or "ro" in mount.super_options or _statvfs_readonly(path)


def classify(fstype: str) -> MountKind:
    """Classify a file-system type as "network", "fuse" or "local"."""
    if fstype in _NETWORK_FSTYPES:
        return "network"
    if fstype in ("fuse", "fuseblk") or fstype.startswith("fuse."):
        return "fuse"
    return "local"


def _stat_source(path: Path) -> os.stat_result:
    """Stat a source path, turning every failure into a one-line MountError."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise MountError(
            f"source {_show(path)} does not exist: "
            "check the mount's destination in valohai.yaml or pass --source"
        ) from None
    except OSError as exc:
        raise MountError(
            f"source {_show(path)} cannot be accessed ({exc.strerror or exc}): "
            "check that its mount is alive (remount it) and that this user may read it"
        ) from None


def _check_listable(path: Path) -> None:
    """Raise MountError unless path is a directory this process can read and list."""
    if not stat.S_ISDIR(_stat_source(path).st_mode):
        raise MountError(
            f"source {_show(path)} is not a directory: point --source (or the mount's "
            "destination in valohai.yaml) at the directory holding the files"
        )
    try:
        listable = os.access(path, os.R_OK | os.X_OK)
        if listable:
            with os.scandir(path) as entries:
                next(entries, None)
    except OSError as exc:
        logger.debug("listing %s failed: %s", _show(path), exc)
        listable = False
    if not listable:
        raise MountError(
            f"source {_show(path)} is not readable or cannot be listed: "
            "grant this user read and execute permission on it, or check that its mount is alive"
        )


def _build_report(path: Path, mount: MountInfo) -> MountReport:
    """Describe path and the mount holding it."""
    realpath = os.path.realpath(path)
    kind = classify(mount.fstype)
    is_mount_point = realpath == mount.mount_point
    readonly = is_readonly(mount, realpath)
    extra = tuple(opt for opt in mount.super_options if opt not in mount.mount_options)
    return MountReport(
        path=path,
        realpath=realpath,
        mount_point=mount.mount_point,
        fstype=mount.fstype,
        source=mount.source,
        kind=kind,
        options=mount.mount_options + extra,
        readonly=readonly,
        is_mount_point=is_mount_point,
        # a subdirectory of a read-only local mount (a bind mount) counts as mounted too; a
        # subdirectory of a read-write local one (/home on its own disk) is a plain directory
        on_mount=is_mount_point or kind != "local" or (mount.mount_point != "/" and readonly),
    )


def _describe(report: MountReport) -> str:
    """Name a report's mount for a message: '<mount_point>, <fstype> <source>'."""
    return f"{_show(report.mount_point)}, {report.fstype} {_show(report.source)}"


def _plain_directory(report: MountReport, *, strict: bool) -> list[str]:
    """Raise under --strict-mounts, else return the warning for a source that is no mount."""
    where = f"a plain directory on {_describe(report)}"
    if strict:
        raise MountError(
            f"source {_show(report.path)} is not a mount point ({where}): the mount may have "
            "failed; check `mounts:` in valohai.yaml, or pass --no-strict-mounts to run on a "
            "plain directory"
        )
    return [
        f"source {_show(report.path)} is not a mount point ({where}): running on it as a "
        "plain directory without the read-only check; pass --strict-mounts to make this an error"
    ]


def _writable_mount(report: MountReport, *, allow_writable: bool) -> list[str]:
    """Raise unless --allow-writable, else return the warning for a read-write source mount."""
    where = f"a read-write mount ({_describe(report)})"
    if not allow_writable:
        raise MountError(
            f"source {_show(report.path)} is on {where}: mount it read-only (`readonly: true` "
            "in valohai.yaml, or `mount -o remount,ro`), or pass --allow-writable if that is "
            "intended"
        )
    return [f"source {_show(report.path)} is on {where}: allowed by --allow-writable"]


def check_source(
    path: Path,
    *,
    declared_readonly: bool = True,
    strict: bool,
    allow_writable: bool,
    mounts: list[MountInfo] | None = None,
) -> tuple[MountReport, list[str]]:
    """Preflight a source directory; return its report and warnings, or raise MountError."""
    _check_listable(path)
    table = read_mount_table() if mounts is None else mounts
    report = _build_report(path, find_mount(path, table))
    logger.debug("source mount report: %s", report)
    if not report.on_mount:
        return report, _plain_directory(report, strict=strict)
    if declared_readonly and not report.readonly:
        return report, _writable_mount(report, allow_writable=allow_writable)
    return report, []


def _nearest_existing(path: Path) -> Path:
    """Return the closest ancestor of an absolute path that exists (at worst '/')."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return parent
    return Path(path.anchor)


def _writable_problem(path: Path) -> str | None:
    """Say why an existing path cannot hold new files, or None if it can."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"it cannot be accessed ({exc.strerror or exc})"
    if not stat.S_ISDIR(mode):
        return "it is not a directory"
    if _statvfs_readonly(path):
        return "it is on a read-only mount"
    if not os.access(path, os.W_OK | os.X_OK):
        return "this user lacks write and execute permission on it"
    return None


def check_writable_dir(path: Path, role: str) -> None:
    """Raise MountError unless path is (or could be created as) a writable directory."""
    absolute = Path(os.path.abspath(path))
    if os.path.lexists(absolute):
        problem = _writable_problem(absolute)
        subject = f"{role} directory {_show(path)} is not writable"
    else:
        ancestor = _nearest_existing(absolute)
        problem = _writable_problem(ancestor)
        subject = (
            f"{role} directory {_show(path)} cannot be created "
            f"(its nearest existing parent {_show(ancestor)} is not writable)"
        )
    if problem is not None:
        raise MountError(
            f"{subject}: {problem}; point --{role} at a writable directory "
            "on a read-write mount, or fix the permissions"
        )
