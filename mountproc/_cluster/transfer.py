"""Tars built on a worker's own disk brought to this machine over the Dask connection, in
chunks, checked against their sha256."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from distributed import Client

from mountproc._errors import ClusterError
from mountproc._mounts.table import DISK_FULL_ERRNOS, find_oserror
from mountproc._records import ShardResult

R = TypeVar("R")

FETCH_CHUNK_BYTES = 16 << 20


FETCH_TIMEOUT_S = 300


FETCH_POLL_S = 2.0  # how often a copy checks that its worker is still there


def fetch_file(client: Client, worker: str, remote: str, local: Path) -> tuple[str, int]:
    """Copy the file ``remote`` from ``worker``'s disk to ``local`` in chunks, then delete it
    there; return the sha256 and size of what was copied."""
    sha, size = hashlib.sha256(), 0
    with local.open("xb") as out:
        while True:
            chunk = _on(client, worker, read_chunk, remote, size, FETCH_CHUNK_BYTES)
            if not chunk:
                break
            sha.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    _on(client, worker, remove_file, remote)
    return sha.hexdigest(), size


def _on(client: Client, worker: str, fn: Callable[..., R], *args: Any) -> R:
    """Run ``fn`` on that very worker (it holds the file); fail at once if it leaves."""
    fut = client.submit(fn, *args, workers=[worker], allow_other_workers=False, pure=False)
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    while True:
        try:
            result: R = fut.result(timeout=FETCH_POLL_S)
            return result
        except (TimeoutError, asyncio.TimeoutError):  # distinct types before Python 3.11
            pass
        gone = worker not in client.scheduler_info(n_workers=-1)["workers"]
        if gone or time.monotonic() > deadline:
            fut.cancel()
            why = "left the cluster" if gone else f"did not answer within {FETCH_TIMEOUT_S} s"
            raise ClusterError(f"worker {worker} {why} before handing over {args[0]}")


def forget_file(client: Client, worker: str, path: str) -> None:
    """Delete ``path`` on ``worker`` if it is still there to do it (best effort)."""
    with contextlib.suppress(Exception):
        if worker in client.scheduler_info(n_workers=-1)["workers"]:
            _on(client, worker, remove_file, path)


def read_chunk(path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``path`` from ``offset`` (b"" at the end): how a tar built on a
    worker's own disk travels to the driver."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def remove_file(path: str) -> None:
    """Delete ``path`` if it exists."""
    Path(path).unlink(missing_ok=True)


def brought(
    client: Client, shards: Path, outcome: ShardResult | BaseException, worker: str
) -> ShardResult | BaseException:
    """The outcome with its tar in this machine's scratch: copied from the worker's own disk
    when it does not share scratch; a failed copy fails the shard."""
    if not isinstance(outcome, ShardResult) or outcome.scratch_shared or outcome.stopped:
        return outcome
    local = shards / f"{outcome.tar_name}.{uuid.uuid4().hex[:8]}.copy.partial"
    try:
        sha, size = fetch_file(client, worker, outcome.tar_path, local)
    except BaseException as exc:
        local.unlink(missing_ok=True)
        forget_file(client, worker, outcome.tar_path)
        if not isinstance(exc, Exception) or find_oserror(exc, DISK_FULL_ERRNOS) is not None:
            raise  # Ctrl-C, or this machine's disk is full: every copy would fail alike
        return RuntimeError(f"its tar could not be copied from worker {worker}: {exc}")
    if (sha, size) != (outcome.sha256, outcome.tar_bytes):
        local.unlink(missing_ok=True)
        return RuntimeError(f"its tar copied from worker {worker} does not match its sha256")
    return replace(outcome, tar_path=str(local))
