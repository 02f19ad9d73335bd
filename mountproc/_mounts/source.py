"""The source's mount contract: a live, read-only mount (or, off Valohai, a plain directory),
not empty, its facts reported."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mountproc._errors import (
    MountError,
)
from mountproc._mounts.table import (
    DEFAULT_TIMEOUT_S,
    SICK_ERRNOS,
    MountInfo,
    MountKind,
    classify,
    errno_text,
    find_mount,
    is_readonly,
    lookup_unique,
    not_alive,
    read_mount_table,
    service,
    show,
    within,
)
from mountproc._records import SourceView

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    report, has_entries = within(lambda: _inspect(path, mounts), timeout, "source", path)
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
