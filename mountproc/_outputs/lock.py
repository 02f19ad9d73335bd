"""One run at a time per job and outputs directory: a lock held for the whole run, in a file
beside outputs (never inside: Valohai would upload it). The kernel drops a dead holder's lock,
so a run that died is taken over, with a warning naming it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mountproc._errors import RunLockedError

log = logging.getLogger(__name__)


def lock_path(outputs: Path, scratch: Path, job: str, test_mode: bool) -> Path:
    """Beside ``outputs``, one lock per job and mode (in ``scratch`` when the directory that
    holds outputs is not writable)."""
    mode = ".test-mode" if test_mode else ""
    name = f".mountproc-lock-{outputs.name}-{job}{mode}"
    beside = outputs.parent
    return beside / name if os.access(beside, os.W_OK) else scratch / name


@contextmanager
def run_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at ``path`` for ``what`` (a run of a job into a directory); raise
    ``RunLockedError`` at once, naming the holder, if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"another {what} is running ({_holder(_read(fd))}): wait for it to end, or stop "
                "it; a run that died leaves no lock behind"
            ) from None
        earlier = _read(fd)
        if earlier:
            log.warning("taking over the lock of a %s that ended without releasing it (%s)",
                        what, _holder(earlier))  # fmt: skip
        _write(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        os.close(fd)  # releases the lock


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _write(fd: int) -> None:
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)


def _holder(info: dict[str, Any]) -> str:
    if not info:
        return "holder unknown"
    return f"host {info.get('host')}, pid {info.get('pid')}, since {info.get('since')}"
