"""Reproducible uncompressed tars, built beside their final name and renamed once complete.

A member is ``<key>.<suffix>``: the key is the source path relative to the source root with
``%``, dots in the file name, control characters and undecodable bytes percent-escaped, so keys
are unique, never absolute, never ``..``, and WebDataset splits key and suffix correctly.

The bytes are those of ``tarfile`` in PAX format (``addfile`` of a ``TarInfo`` with the fixed
metadata below). A member whose name is ASCII and at most 100 bytes long and whose size fits
the ustar field, nearly every one, gets its header from a template made by ``tarfile`` itself
with only the name, the size and the checksum filled in (``tobuf`` costs ~25 us a member);
any other member's header is ``tobuf``'s.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

MEMBER_MTIME = 0  # fixed so the same inputs give the same bytes
MEMBER_MODE = 0o444
BLOCK = tarfile.BLOCKSIZE
BATCH_BYTES = 1 << 20  # written with one writev, hashed as one job
BATCH_PIECES = 1000  # below IOV_MAX (1024 on Linux)
UNHASHED_MAX = 16 << 20  # bytes written but not hashed yet: beyond this, add waits
_ZEROS = bytes(tarfile.RECORDSIZE + 2 * BLOCK)  # the longest run of NULs: the end
_SIZE_LIMIT = 8**11  # the ustar size field's; bigger sizes go to a PAX header


def _info(name: str, size: int) -> tarfile.TarInfo:
    """A regular file's ``TarInfo`` with the fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MEMBER_MTIME, MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tobuf(name: str, size: int) -> bytes:
    """``tarfile``'s own header (with a PAX header before it when needed)."""
    return _info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


# ustar fields: name [0, 100), mode uid gid [100, 124), size [124, 136), mtime [136, 148),
# checksum [148, 156), type, link name, magic, ... [156, 512)
_TEMPLATE = _tobuf("", 0)
_HEAD, _MIDDLE, _TAIL = _TEMPLATE[100:124], _TEMPLATE[136:148], _TEMPLATE[156:BLOCK]
_FIXED_SUM = sum(_HEAD) + sum(_MIDDLE) + sum(_TAIL) + 8 * ord(" ")  # the checksum's own: spaces


def header(name: str, size: int) -> bytes:
    """The header block(s) of a member: the template filled in, or ``tobuf``'s."""
    if size >= _SIZE_LIMIT or len(name) > 100 or not name.isascii():
        return _tobuf(name, size)
    raw = name.encode("ascii")
    size_field = b"%011o\0" % size
    chksum = b"%06o\0 " % (_FIXED_SUM + sum(raw) + sum(size_field))
    return b"".join((raw.ljust(100, b"\0"), _HEAD, size_field, _MIDDLE, chksum, _TAIL))


class _Digests:
    """The sha256 and md5 of a stream, each updated in order on a thread of its own (hashlib lets
    go of the GIL): md5 alone takes longer than writing a tar of large files, and both on one
    thread made packing 200 MB take 1.7x GNU tar's time. At most ``UNHASHED_MAX`` bytes wait."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)  # what wids checks a shard by
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix="tar-hash") for _ in range(2)]
        self._pending: deque[tuple[list[Future[None]], int]] = deque()
        self._waiting = 0

    def feed(self, pieces: list[bytes], size: int) -> None:
        """Hash ``pieces`` after everything fed before."""
        updates = zip(self._pools, (self.sha.update, self.md5.update), strict=True)
        futures = [pool.submit(_each, update, pieces) for pool, update in updates]
        self._pending.append((futures, size))
        self._waiting += size
        while self._waiting > UNHASHED_MAX:
            self._wait_one()

    def _wait_one(self) -> None:
        futures, size = self._pending.popleft()
        self._waiting -= size
        for future in futures:
            future.result()

    def wait(self) -> None:
        """Return once everything fed is hashed."""
        while self._pending:
            self._wait_one()

    def stop(self) -> None:
        """End the threads; what was fed but not hashed yet is not hashed."""
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


def _each(update: Callable[[bytes], None], pieces: list[bytes]) -> None:
    for piece in pieces:
        update(piece)


class TarBuilder:
    """Builds one tar at ``path.partial`` and renames it to ``path`` only once it is complete
    and fsynced; its sha256 and md5 are computed while writing.

    Members are gathered into batches of about ``BATCH_BYTES``, each written with one
    ``writev`` and hashed on the digests' thread meanwhile; the last batch's hashing overlaps
    the fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # a name of its own: an attempt orphaned by a dead driver may still be writing
        self.partial = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._fd = os.open(self.partial, flags, 0o666)
        self._digests = _Digests()
        self._batch: list[bytes] = []
        self._batched = 0
        self.size = 0  # bytes added so far

    def add(self, name: str, data: bytes) -> None:
        """Add one member with fixed metadata: its header, its data and its padding."""
        head = header(name, len(data))
        padding = -len(data) % BLOCK
        self._batch += (head, data, _ZEROS[:padding]) if padding else (head, data)
        self._batched += len(head) + len(data) + padding
        if self._batched >= BATCH_BYTES or len(self._batch) >= BATCH_PIECES:
            self._flush()

    def _flush(self) -> None:
        """Write the batch and hand it to the digests."""
        if not self._batch:
            return
        batch, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        _write_all(self._fd, batch, size)
        self.size += size
        self._digests.feed(batch, size)

    def close(self) -> tuple[str, int]:
        """Finish, fsync and rename into place; return ``(sha256, size)``."""
        end = self.size + self._batched + 2 * BLOCK  # tarfile.close: two zero blocks, then
        self._batch.append(_ZEROS[: 2 * BLOCK + -end % tarfile.RECORDSIZE])  # a whole record
        self._batched += len(self._batch[-1])
        self._flush()
        os.fsync(self._fd)
        self._digests.wait()
        self._digests.stop()  # its thread ends now, not when the builder is collected
        os.close(self._fd)
        self._fd = -1
        os.replace(self.partial, self.path)
        return self._digests.sha.hexdigest(), self.size

    @property
    def md5(self) -> str:
        """The md5 of the bytes added so far (of the whole tar once closed)."""
        if self._fd >= 0:
            self._flush()
        self._digests.wait()
        return self._digests.md5.hexdigest()

    def abort(self) -> None:
        """Drop the partial tar (closing it may fail again on a full disk: drop it anyway)."""
        self._digests.stop()
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> TarBuilder:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            self.abort()


def _write_all(fd: int, pieces: list[bytes], size: int) -> None:
    """Write ``pieces`` (``size`` bytes) with one ``writev``, and the rest of a short write."""
    done = os.writev(fd, pieces)
    if done == size:
        return
    for piece in pieces:
        if done >= len(piece):
            done -= len(piece)
            continue
        rest, done = memoryview(piece)[done:], 0
        while rest:
            rest = rest[os.write(fd, rest) :]
