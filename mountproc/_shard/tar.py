"""Reproducible uncompressed tars, built beside their final name and renamed once complete.

A member is ``<key>.<suffix>``: the key is the source path relative to the source root with
``%``, dots in the file name, control characters and undecodable bytes percent-escaped, so keys
are unique, never absolute, never ``..``, and WebDataset splits key and suffix correctly.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from pathlib import Path
from types import TracebackType

MEMBER_MTIME = 0  # fixed so the same inputs give the same bytes
MEMBER_MODE = 0o444


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)  # what wids checks a shard by
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.md5.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


class TarBuilder:
    """Builds one tar at ``path.partial`` and renames it to ``path`` only once it is complete
    and fsynced; its sha256 and md5 are computed while writing."""

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

    @property
    def md5(self) -> str:
        """The md5 of the bytes written so far (of the whole tar once closed)."""
        return self._hash.md5.hexdigest()

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
