"""A worker's view of the source and scratch, checked against the driver's before its first
shard."""

from __future__ import annotations

from pathlib import Path

from mountproc._errors import (
    MountError,
    SourceLostError,
    WorkerMountError,
)
from mountproc._mounts.dirs import check_writable_dir
from mountproc._mounts.source import check_source
from mountproc._mounts.table import (
    MountNotAliveError,
    show,
    within,
)
from mountproc._records import SourceView, WorkerCheck


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
    if not check.remote:
        _check_source_view(check, source, worker)
    return _shares_scratch(check, worker)


def _check_source_view(check: WorkerCheck, source: Path, worker: str) -> None:
    """Raise unless this worker sees the source's mount as the driver does."""
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


def _shares_scratch(check: WorkerCheck, worker: str) -> bool:
    """Whether this worker sees the driver's scratch (its token); else its own must do."""
    token = Path(check.token_path)
    try:
        seen = within(lambda: token.read_text(), check.timeout_s, "scratch", token.parent)
    except OSError:
        seen = None
    if seen == check.token:
        return True
    try:
        check_writable_dir(token.parent, "scratch", check.timeout_s)
    except MountError as exc:
        raise WorkerMountError(f"worker {worker} has no scratch of its own: {exc}") from None
    return False
