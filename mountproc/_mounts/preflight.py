"""The mount contract before any work: the source is a live, read-only mount, scratch and outputs
are writable with room to spare, and every worker sees them as this machine does."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mountproc._errors import (
    MountError,
    SourceLostError,
    WorkerMountError,
)
from mountproc._mounts.table import (
    SICK_ERRNOS,
    MountInfo,
    MountKind,
    MountNotAliveError,
    call_with_timeout,
    classify,
    errno_text,
    find_mount,
    is_readonly,
    lookup_unique,
    not_alive,
    read_mount_table,
    service,
    show,
    statvfs_readonly,
)
from mountproc._records import SourceView, WorkerCheck

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0


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
    service: str | None = None

    def view(self) -> SourceView:
        """The facts that every machine of a run must see alike."""
        return SourceView(self.mount_point, self.fstype, self.source, self.readonly, self.on_mount)

    def as_dict(self) -> dict[str, object]:
        """Return the report as JSON-serialisable data for the run summary."""
        return {
            "path": str(self.path),
            "realpath": self.realpath,
            "mount_point": self.mount_point,
            "fstype": self.fstype,
            "source": self.source,
            "kind": self.kind,
            "service": self.service,
            "options": list(self.options),
            "readonly": self.readonly,
            "is_mount_point": self.is_mount_point,
            "on_mount": self.on_mount,
        }


def _within(fn: Callable[[], T], timeout: float, role: str, path: Path) -> T:
    """Run a check that touches ``path`` with a time limit: a hung mount fails, never blocks."""
    try:
        return call_with_timeout(fn, timeout)
    except TimeoutError:
        raise not_alive(role, path, f"no answer within {timeout:g} s") from None


def _stat_source(path: Path) -> os.stat_result:
    """Stat a source path, turning every failure into a one-line MountError."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise MountError(
            f"source {show(path)} does not exist: "
            "check the mount's destination in valohai.yaml or pass --source"
        ) from None
    except OSError as exc:
        if exc.errno in SICK_ERRNOS:
            raise not_alive("source", path, errno_text(exc)) from None
        raise MountError(
            f"source {show(path)} cannot be accessed ({errno_text(exc)}): "
            "check that this user may read it"
        ) from None


def _first_entry(path: Path) -> bool:
    """Tell whether a directory has at least one entry; raise MountError if it cannot be listed."""
    try:
        if os.access(path, os.R_OK | os.X_OK):
            with os.scandir(path) as entries:
                return next(entries, None) is not None
    except OSError as exc:
        if exc.errno in SICK_ERRNOS:
            raise not_alive("source", path, errno_text(exc)) from None
        logger.debug("listing %s failed: %s", show(path), exc)
    raise MountError(
        f"source {show(path)} is not readable or cannot be listed: "
        "grant this user read and execute permission on it"
    )


def _inspect(path: Path, mounts: list[MountInfo] | None) -> tuple[MountReport, bool]:
    """Stat and list ``path``, find its mount; return the report and whether it has entries."""
    if not stat.S_ISDIR(_stat_source(path).st_mode):
        raise MountError(
            f"source {show(path)} is not a directory: point --source (or the mount's "
            "destination in valohai.yaml) at the directory holding the files"
        )
    has_entries = _first_entry(path)
    try:
        lookup_unique(path)
    except OSError as exc:
        if exc.errno not in SICK_ERRNOS:
            raise
        raise not_alive("source", path, errno_text(exc)) from None
    table = read_mount_table() if mounts is None else mounts
    return _build_report(path, find_mount(path, table)), has_entries


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
        service=service(mount),
    )


def _describe(report: MountReport) -> str:
    """Name a report's mount for a message: '<mount_point>, <fstype> <source>'."""
    return f"{show(report.mount_point)}, {report.fstype} {show(report.source)}"


def _plain_directory(report: MountReport, *, strict: bool) -> list[str]:
    """Raise under --strict-mounts, else return the warning for a source that is no mount."""
    where = f"a plain directory on {_describe(report)}"
    if strict:
        raise MountError(
            f"source {show(report.path)} is not a mount point ({where}): the mount may have "
            "failed; check `mounts:` in valohai.yaml, or pass --no-strict-mounts to run on a "
            "plain directory"
        )
    return [
        f"source {show(report.path)} is not a mount point ({where}): running on it as a "
        "plain directory without the read-only check; pass --strict-mounts to make this an error"
    ]


def _writable_mount(report: MountReport, *, allow_writable: bool) -> list[str]:
    """Raise unless --allow-writable, else return the warning for a read-write source mount."""
    where = f"a read-write mount ({_describe(report)})"
    if not allow_writable:
        raise MountError(
            f"source {show(report.path)} is on {where}: mount it read-only (`readonly: true` "
            "in valohai.yaml, or `mount -o remount,ro`), or pass --allow-writable if that is "
            "intended"
        )
    return [f"source {show(report.path)} is on {where}: allowed by --allow-writable"]


def check_source(
    path: Path,
    *,
    declared_readonly: bool = True,
    strict: bool,
    allow_writable: bool,
    allow_empty: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    mounts: list[MountInfo] | None = None,
) -> tuple[MountReport, list[str]]:
    """Preflight a source directory; return its report and warnings, or raise MountError.
    Every call that touches the mount runs under ``timeout``: a hung mount is an error."""
    report, has_entries = _within(lambda: _inspect(path, mounts), timeout, "source", path)
    logger.debug("source mount report: %s", report)
    if not has_entries and not allow_empty:
        raise MountError(
            f"source {show(path)} is empty ({_describe(report)}): the mount may not be "
            "populated yet, or the wrong export is mounted; check `mounts:` in valohai.yaml, "
            "or pass --allow-empty"
        )
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
        return f"it cannot be accessed ({errno_text(exc)})"
    if not stat.S_ISDIR(mode):
        return "it is not a directory"
    if statvfs_readonly(path):
        return "it is on a read-only mount"
    if not os.access(path, os.W_OK | os.X_OK):
        return "this user lacks write and execute permission on it"
    return None


def _existing(path: Path) -> tuple[Path, bool]:
    """The absolute path if it exists, else its nearest existing ancestor; and which it is."""
    absolute = Path(os.path.abspath(path))
    if os.path.lexists(absolute):
        return absolute, True
    return _nearest_existing(absolute), False


def check_writable_dir(path: Path, role: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise MountError unless path is (or could be created as) a writable directory."""
    target, exists = _within(lambda: _existing(path), timeout, role, path)
    problem = _within(lambda: _writable_problem(target), timeout, role, target)
    if exists:
        subject = f"{role} directory {show(path)} is not writable"
    else:
        subject = (
            f"{role} directory {show(path)} cannot be created "
            f"(its nearest existing parent {show(target)} is not writable)"
        )
    if problem is not None:
        raise MountError(
            f"{subject}: {problem}; point --{role} at a writable directory "
            "on a read-write mount, or fix the permissions"
        )


@dataclass(frozen=True)
class DirReport:
    """What the preflight found out about scratch or outputs."""

    role: str
    path: Path
    mount_point: str
    fstype: str
    free_bytes: int

    def as_dict(self) -> dict[str, object]:
        """Return the report as JSON-serialisable data for the run summary."""
        return {
            "path": str(self.path),
            "mount_point": self.mount_point,
            "fstype": self.fstype,
            "free_bytes": self.free_bytes,
            "free": human_bytes(self.free_bytes),
        }


def check_output_dir(
    path: Path, role: str, min_free: int, timeout: float = DEFAULT_TIMEOUT_S
) -> DirReport:
    """Raise MountError unless ``path`` is writable and its disk has ``min_free`` bytes free."""
    check_writable_dir(path, role, timeout)
    target, _ = _within(lambda: _existing(path), timeout, role, path)
    free = _within(lambda: shutil.disk_usage(target).free, timeout, role, target)
    if free < min_free:
        raise MountError(
            f"{role} directory {show(path)} has {human_bytes(free)} free, less than "
            f"--min-free-space={human_bytes(min_free)}: free some space, point --{role} at a "
            "bigger disk, or lower --min-free-space"
        )
    mount = _within(lambda: find_mount(target, read_mount_table()), timeout, role, target)
    return DirReport(role, path, mount.mount_point, mount.fstype, free)


def human_bytes(n: int) -> str:
    """1.5 GiB, 300 MiB, 12 KiB, 7 B."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _difference(here: SourceView, there: SourceView) -> str | None:
    """Say how a worker's view of the source differs from the driver's, or None."""
    if here.on_mount and not there.on_mount:
        return f"it is not a mount there (a plain directory on {show(there.mount_point)})"
    if here.readonly and not there.readonly:
        return "it is mounted read-write there"
    if (here.fstype, here.source) != (there.fstype, there.source):
        return (
            f"it is {there.fstype} {show(there.source)} there but {here.fstype} "
            f"{show(here.source)} here: mount the same export"
        )
    if here.mount_point != there.mount_point:
        return f"it is mounted at {show(there.mount_point)} there, {show(here.mount_point)} here"
    return None


def check_worker(check: WorkerCheck, worker: str) -> bool:
    """Raise unless this process (a worker) sees the source as the driver does; return whether
    it shares the driver's scratch directory (else it builds shards in a scratch of its own,
    which must be writable, and the driver copies each finished tar over)."""
    source = Path(check.source)
    try:
        report, _ = check_source(source, strict=False, allow_writable=True, timeout=check.timeout_s)
    except MountNotAliveError as exc:
        raise SourceLostError(f"worker {worker}: {exc}") from None
    except MountError as exc:
        raise WorkerMountError(f"worker {worker}: {exc}") from None
    problem = _difference(check.view, report.view())
    if problem is not None:
        raise WorkerMountError(
            f"worker {worker} sees the source {show(source)} differently: {problem}; mount it "
            "the same way on every machine of the cluster"
        )
    token = Path(check.token_path)
    try:
        seen = _within(lambda: token.read_text(), check.timeout_s, "scratch", token.parent)
    except OSError:
        seen = None
    if seen == check.token:
        return True
    try:
        check_writable_dir(token.parent, "scratch", check.timeout_s)
    except MountError as exc:
        raise WorkerMountError(f"worker {worker} has no scratch of its own: {exc}") from None
    return False
