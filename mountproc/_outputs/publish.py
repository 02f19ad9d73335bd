"""Publishing into outputs: a finished file is moved in, never overwriting, fsynced, and made
read-only (Valohai uploads a read-only file at once); a full disk becomes ``DiskFullError``."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mountproc._errors import DiskFullError
from mountproc._mounts.table import DISK_FULL_ERRNOS, show

T = TypeVar("T")
PUBLISHED_MODE = 0o444


def publish(src: Path, dest: Path) -> None:
    """Move a finished file into the outputs directory and make it read-only (Valohai uploads
    read-only files at once). Never overwrites: on one disk a hard link claims the name
    atomically; across disks the file is copied exclusively under its final name, then fsynced."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, "refusing to overwrite a published file", str(dest)
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        _copy_exclusive(src, dest)
    src.unlink()
    os.chmod(dest, PUBLISHED_MODE)
    _fsync_dir(dest.parent)


def _copy_exclusive(src: Path, dest: Path) -> None:
    """Copy and fsync; never overwrite ``dest``, and never leave a partial copy behind (it would
    block a retry and be uploaded as a corrupt file)."""
    with src.open("rb") as fin, dest.open("xb") as fout:
        try:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        except BaseException:
            dest.unlink(missing_ok=True)
            raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_full_is_an_error(fn: Callable[[], T]) -> T:
    """Run ``fn``; a full disk (scratch or outputs) becomes DiskFullError naming the path."""
    try:
        return fn()
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        where = show(exc.filename) if exc.filename else "scratch or outputs"
        raise DiskFullError(
            f"no space left writing {where} ({exc.strerror}): free space or point --scratch "
            "and --outputs at bigger disks, then run again"
        ) from None


def shielded(fn: Callable[[], None]) -> None:
    """Run ``fn`` to completion even if Ctrl-C or SIGTERM arrives meanwhile, then re-raise the
    interrupt. Signal handlers run in the main thread, so ``fn`` runs in another one."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    worker = threading.Thread(target=target, name="mountproc-publish")
    worker.start()
    interrupted: KeyboardInterrupt | None = None
    while worker.is_alive():
        try:
            worker.join()
        except KeyboardInterrupt as exc:
            interrupted = exc
    if errors:
        raise errors[0]
    if interrupted is not None:
        raise interrupted
