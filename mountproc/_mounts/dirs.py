"""Scratch and outputs before any work: writable, outside the source, with room to spare."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from mountproc._errors import (
    MountError,
)
from mountproc._mounts.table import (
    DEFAULT_TIMEOUT_S,
    errno_text,
    find_mount,
    read_mount_table,
    show,
    statvfs_readonly,
    within,
)


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
    target, exists = within(lambda: _existing(path), timeout, role, path)
    problem = within(lambda: _writable_problem(target), timeout, role, target)
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
    target, _ = within(lambda: _existing(path), timeout, role, path)
    free = within(lambda: shutil.disk_usage(target).free, timeout, role, target)
    if free < min_free:
        raise MountError(
            f"{role} directory {show(path)} has {human_bytes(free)} free, less than "
            f"--min-free-space={human_bytes(min_free)}: free some space, point --{role} at a "
            "bigger disk, or lower --min-free-space"
        )
    mount = within(lambda: find_mount(target, read_mount_table()), timeout, role, target)
    return DirReport(role, path, mount.mount_point, mount.fstype, free)


def human_bytes(n: int) -> str:
    """1.5 GiB, 300 MiB, 12 KiB, 7 B."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
