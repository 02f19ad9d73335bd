"""Tar members named from source paths, reproducible uncompressed tars, and atomic publishing.

A member is ``<key>.<suffix>``: the key is the source path relative to the source root with
``%``, dots in the file name, control characters and undecodable bytes percent-escaped, so keys
are unique, never absolute, never ``..``, and WebDataset splits key and suffix correctly.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import tarfile
import uuid
from pathlib import Path
from types import TracebackType

MEMBER_MTIME = 0  # fixed so the same inputs give the same bytes
MEMBER_MODE = 0o444


def member_key(relpath: str) -> str:
    """The sample key of a source path (see the module docstring)."""
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe relative path {relpath!r}")
    *dirs, name = parts
    return "/".join([*(_escape(d, "") for d in dirs), _escape(name, ".")])


def _escape(part: str, extra: str) -> str:
    out = []
    for ch in part:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"%{code - 0xDC00:02X}")
        elif ch == "%" or ch in extra or code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        else:
            out.append(ch)
    return "".join(out)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


class TarBuilder:
    """Builds one tar at ``path.partial`` and renames it to ``path`` only once it is complete
    and fsynced; the sha256 is computed while writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # a name of its own: an attempt orphaned by a dead driver may still be writing
        self.partial = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        self._raw = self.partial.open("wb")
        self._hash = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        """Add one member with fixed metadata: the header ``tarfile`` makes, then the data and
        its padding in one write each (``addfile`` copies through 16 KiB chunks)."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), MEMBER_MTIME, MEMBER_MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar = self._tar
        self._hash.write(info.tobuf(tar.format, tar.encoding, tar.errors))
        self._hash.write(data)
        padding = -len(data) % tarfile.BLOCKSIZE
        if padding:
            self._hash.write(tarfile.NUL * padding)
        tar.offset = self._hash.size  # where close() pads the archive from

    def close(self) -> tuple[str, int]:
        """Finish, fsync and rename into place; return ``(sha256, size)``."""
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.partial, self.path)
        return self._hash.sha.hexdigest(), self._hash.size

    def abort(self) -> None:
        """Drop the partial tar (closing it may fail again on a full disk: drop it anyway)."""
        try:
            self._raw.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> TarBuilder:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            self.abort()


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
    os.chmod(dest, MEMBER_MODE)
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


def read_chunk(path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``path`` from ``offset`` (b"" at the end): how a tar built on a
    worker's own disk travels to the driver."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def remove_file(path: str) -> None:
    """Delete ``path`` if it exists."""
    Path(path).unlink(missing_ok=True)
