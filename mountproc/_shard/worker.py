"""Runs one shard: the transform on each file, outputs streamed into the shard's tar in scratch.

Plain data in, plain data out, no Dask import: it runs the same under a test, a LocalCluster
or a remote worker. A failing file becomes a ``FileResult``; only what would fail every shard
(a broken job setup, a worker that sees the mounts differently, a dead source mount, a full
scratch disk) is raised, as a ``MountprocError`` that stops the run.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from mountproc._errors import (
    DiskFullError,
    JobFileError,
    JobSetupError,
    MountprocError,
    SourceLostError,
)
from mountproc._job import Context, Job, Skip, SourceFile
from mountproc._jobfile import load_job
from mountproc._mounts.table import (
    DISK_FULL_ERRNOS,
    MountKind,
    classify,
    errno_text,
    find_oserror,
    probe_alive,
    sick_error,
)
from mountproc._mounts.workers import check_worker
from mountproc._records import (
    FileEntry,
    FileResult,
    RemoteFiles,
    ShardResult,
    ShardSpec,
    Status,
    StopRules,
    display_path,
)
from mountproc._shard import failures, sample
from mountproc._shard.download import IN_FLIGHT, download
from mountproc._shard.reading import ReadAhead, SourceRead, read_source
from mountproc._shard.tar import TarBuilder
from mountproc._shard.watchdog import ShardNotes, watchdog

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
Report = Callable[[dict[str, int]], None]
READ_ATTEMPTS = 3
"""Attempts at a file whose mount answers with ENOTCONN, ESTALE, EIO...: reopening the path
gets past a failover or a transient handle error."""

_RETRYING = Retrying(
    stop=stop_after_attempt(READ_ATTEMPTS),
    wait=wait_exponential(multiplier=0.2, max=2.0),
    retry=retry_if_exception(lambda exc: sick_error(exc) is not None),
    reraise=True,
)
"""One policy for every call (tenacity keeps each call's state per thread). A ``Retrying`` per
call would leave a ``threading.local`` in a reference cycle per file, and on CPython 3.11 the
garbage collector freeing one inside Dask's profiler (``sys._current_frames``) deadlocks the
worker process (CPython gh-106883): a run hung that way twice in the benchmarks."""

MOUNT_AHEAD = 8
MOUNT_THREADS = 4
MOUNT_AHEAD_BYTES = 64 * 1024 * 1024
"""On a network or FUSE mount, reads run on ``MOUNT_THREADS`` threads, up to ``MOUNT_AHEAD``
files and ``MOUNT_AHEAD_BYTES`` ahead of the transform: their round trips overlap each other
and the decoding. On a local disk one file is read ahead, on one thread."""

_STATE: dict[tuple[str, str], Any] = {}
_STATE_LOCK = threading.Lock()
_CHECKED: dict[str, bool] = {}  # run token -> whether this process shares the driver's scratch


def _worker_name() -> str:
    return f"{socket.gethostname()} (pid {os.getpid()})"


def run_shard(spec: ShardSpec, progress: Report | None = None) -> ShardResult:
    """Process every file of ``spec`` and return the finished tar's facts and per-file results;
    ``progress`` (if given) is told the shard's counts as it goes, at most every
    ``PROGRESS_EVERY_S``."""
    shared = _check_once(spec)
    job = load_job(spec.job)
    params = job.params.model_validate_json(spec.params_json)
    state = _worker_state(job, spec, params)
    work_dir = Path(spec.work_dir)
    tmp_dir = work_dir / f"tmp-{spec.index:06d}"
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        ctx = Context(params=params, state=state, shard=spec.index, tmp_dir=tmp_dir)
        results, sha, md5, size, tar_path = _build(job, spec, ctx, _Counts(spec.index, progress))
    except _GiveUp as given_up:  # the tar was dropped: a shard is published whole or not at all
        return ShardResult(spec.index, "", spec.tar_name, "", 0, tuple(given_up.results),
                           socket.gethostname(), shared, stopped=given_up.why)  # fmt: skip
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(
            f"scratch directory {work_dir} is full ({errno_text(exc)}) on worker "
            f"{_worker_name()} while building shard {spec.index}: free space or point --scratch "
            "at a bigger disk, then run again"
        ) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ShardResult(
        index=spec.index,
        tar_path=str(tar_path),
        tar_name=spec.tar_name,
        sha256=sha,
        tar_bytes=size,
        results=tuple(results),
        md5=md5,
        worker=socket.gethostname(),
        scratch_shared=shared,
    )


def _build(
    job: Job, spec: ShardSpec, ctx: Context[Any], counts: _Counts
) -> tuple[list[FileResult], str, str, int, Path]:
    """Run every file into the shard's tar; files condemned by earlier attempts fail at once
    (and are not read: reading may be what hung)."""
    notes = ShardNotes(Path(spec.work_dir), spec.index)
    condemned = notes.recover()
    guard = watchdog()
    reads = _reads(spec, [i for i in range(len(spec.entries)) if i not in condemned], ctx.tmp_dir)
    ahead = iter(reads)
    results = []
    done = False
    try:
        with TarBuilder(Path(spec.work_dir) / spec.tar_name) as tar:
            for pos, entry in enumerate(spec.entries):
                if pos in condemned:
                    results.append(FileResult(entry.path, Status.FAILED, condemned[pos]))
                else:
                    pending = next(ahead)
                    with guard.file(notes, pos, entry.path, spec.source_root, spec.limits):
                        results.append(_process(job, spec, entry, pending, ctx, tar))
                    _drop_copy(pending)
                counts.add(results[-1])
                counts.give_up_if_broken(results, spec.stop)
            sha, size = tar.close()
        done = True
    finally:
        reads.close()
        notes.close(done=done)
    return results, sha, tar.md5, size, tar.path


class _Counts:
    """A shard's counts as it goes: told to ``report`` at most every ``PROGRESS_EVERY_S``, and
    held against the rules that make a worker give up on its shard."""

    def __init__(self, shard: int, report: Report | None) -> None:
        self.shard, self.report, self.last = shard, report, time.monotonic()
        self.by_status = {s.value: 0 for s in (Status.OK, Status.FAILED, Status.SKIPPED)}

    def add(self, result: FileResult) -> None:
        """Count one file's result; report the counts if it is time."""
        self.by_status[result.status.value] += 1
        now = time.monotonic()
        if self.report is not None and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.report({"shard": self.shard, **self.by_status})

    def give_up_if_broken(self, results: list[FileResult], rules: StopRules) -> None:
        """Raise ``_GiveUp`` when more files failed than the whole run may have, or when the
        shard's first files all failed the same way."""
        failed = self.by_status[Status.FAILED.value]
        if rules.max_failed is not None and failed > rules.max_failed:
            why = f"{failed} files failed, more than the run may ({rules.max_failed})"
            raise _GiveUp(why, results)
        if rules.same_first and len(results) == rules.same_first == failed:
            reasons = {failures.general(r.error or "failed", r.path) for r in results}
            if len(reasons) == 1:
                why = f"its first {failed} files all failed the same way: {reasons.pop()}"
                raise _GiveUp(why, results)


class _GiveUp(Exception):
    """The shard stops: its transform is broken, or the run is over its failure budget."""

    def __init__(self, why: str, results: list[FileResult]) -> None:
        super().__init__(why)
        self.why, self.results = why, results


def _reads(spec: ShardSpec, wanted: list[int], tmp_dir: Path) -> ReadAhead[Any]:
    """The shard's files read ahead: from the source (several at a time on a network or FUSE
    mount, where each read waits for round trips), or downloaded a few at a time."""
    remote = spec.remote
    if remote is None:
        root = Path(spec.source_root)
        paths = [root / spec.entries[i].path for i in wanted]
        sizes = [spec.entries[i].size for i in wanted]
        if _source_kind(spec) == "local":
            return ReadAhead(paths, _read)
        return ReadAhead(paths, _read, MOUNT_AHEAD, MOUNT_THREADS, sizes, MOUNT_AHEAD_BYTES)
    return ReadAhead(wanted, partial(_download, remote, spec, tmp_dir), IN_FLIGHT, IN_FLIGHT)


def _source_kind(spec: ShardSpec) -> MountKind:
    """How the source is reached, as the driver's mount check classified its file system (the
    worker's own view was checked to be the same); "local" when the spec carries no check."""
    return "local" if spec.check is None else classify(spec.check.view.fstype)


def _download(remote: RemoteFiles, spec: ShardSpec, tmp_dir: Path, pos: int) -> SourceRead:
    return download(remote, pos, spec.entries[pos], tmp_dir)


def _drop_copy(pending: Future[SourceRead]) -> None:
    """Remove a large download's copy in scratch once its file is done."""
    if pending.done() and not pending.cancelled() and pending.exception() is None:
        copy = pending.result().path
        if copy is not None:
            copy.unlink(missing_ok=True)


def _read(path: Path) -> SourceRead:
    return _with_retries(lambda: read_source(path))  # type: ignore[no-any-return]


def _check_once(spec: ShardSpec) -> bool:
    """Before this process's first shard of a run, check that it sees the source as the driver
    does (workers that joined after the run's start were never checked); return whether it
    shares the driver's scratch."""
    check = spec.check
    if check is None:
        return True
    if check.token not in _CHECKED:
        _CHECKED[check.token] = check_worker(check, _worker_name())
    return _CHECKED[check.token]


def _worker_state(job: Job, spec: ShardSpec, params: Any) -> Any:
    """Run the job's setup once per worker process (and parameter set)."""
    if job.setup_fn is None:
        return None
    key = (spec.job.digest, spec.params_json)
    with _STATE_LOCK:
        if key not in _STATE:
            try:
                _STATE[key] = job.setup_fn(params)
            except Exception as exc:
                raise JobSetupError(
                    f"{spec.job.filename}: the job's setup failed on {socket.gethostname()}: "
                    f"{failures.reason(exc)}"
                ) from None
        return _STATE[key]


def _process(
    job: Job,
    spec: ShardSpec,
    entry: FileEntry,
    pending: Future[SourceRead],
    ctx: Context[Any],
    tar: TarBuilder,
) -> FileResult:
    path = Path(spec.source_root) / entry.path
    src = SourceFile(path, entry.path, entry.size, entry.mtime_ns)
    assert job.transform_fn is not None
    digest = None
    try:
        read = pending.result()
        src = replace(src, data=read.data, sha256=read.sha256, path=read.path or src.path)
        digest = read.sha256
        value = _with_retries(lambda: job.transform_fn(src, ctx))  # type: ignore[misc]
        if value is None:
            return FileResult(
                entry.path, Status.SKIPPED, "declined by the transform", sha256=digest
            )
        outputs = sample.normalize_outputs(value)
    except Skip as exc:
        why = failures.reason(exc) or "declined by the transform"
        return FileResult(entry.path, Status.SKIPPED, why, sha256=digest)
    except Exception as exc:
        why = _failure(exc, spec, entry)
        trace = failures.traceback_text(exc, spec.job.filename)
        return FileResult(entry.path, Status.FAILED, why, traceback=trace, sha256=digest)
    _refuse_reserved(spec, outputs)
    record = sample.record(entry.path, read.size, read.mtime_ns, read.sha256)
    named = sample.members(entry.path, outputs, record)
    for name, data in named:
        tar.add(name, data)
    members = tuple(name for name, _ in named)
    listed = (entry.size, entry.mtime_ns)
    changed = read.changed_while_read or (read.size, read.mtime_ns) != listed
    changed = changed or (spec.remote is None and _changed(src))
    return FileResult(entry.path, Status.OK, None, members, changed, sha256=read.sha256)


def _refuse_reserved(spec: ShardSpec, outputs: list[tuple[str, bytes]]) -> None:
    """An output named like the sample record is the job's mistake on every file: stop the run."""
    if sample.uses_reserved(outputs):
        raise JobFileError(
            f"{spec.job.filename}: the transform returned an output named "
            f"{sample.RECORD_SUFFIX!r}, which mountproc writes itself (each sample's source path, "
            f"size, mtime and sha256): give it another name, e.g. 'meta.{sample.RECORD_SUFFIX}'"
        )


def _changed(src: SourceFile) -> bool:
    """Whether the file's size or mtime now differ from the listing's (it changed after the
    crawl, perhaps while it was read): the manifest flags it."""
    try:
        st = os.stat(src.path)
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns)


def _with_retries(fn: Callable[[], Any]) -> Any:
    """Call ``fn``, again after a short pause while it fails with a mount's error."""
    return _RETRYING(fn)


def _failure(exc: Exception, spec: ShardSpec, entry: FileEntry) -> str:
    """The reason a file failed; raise instead when the failure is the mount's or the disk's."""
    disk = find_oserror(exc, DISK_FULL_ERRNOS)
    if disk is not None:
        raise disk
    why = failures.reason(exc, entry.path)
    if spec.remote is not None:  # a download's failure: no mount to blame
        return why
    sick = sick_error(exc)
    if sick is None and find_oserror(exc, (errno.ENOENT,)) is None:
        return why
    _check_source_still_there(spec, entry)  # a vanished file may be a vanished mount
    if sick is None:
        return why
    return f"{why} (still {errno_text(sick)} after {READ_ATTEMPTS} attempts)"


def _check_source_still_there(spec: ShardSpec, entry: FileEntry) -> None:
    """Raise SourceLostError if the source's mount is dead, hung, or no longer the same."""
    try:
        if spec.check is not None:
            check_worker(spec.check, _worker_name())
        else:
            probe_alive(spec.source_root, spec.limits.mount_timeout_s)
    except (MountprocError, OSError) as exc:  # OSError: the source root itself is gone
        raise SourceLostError(f"{exc} (noticed while reading {display_path(entry.path)})") from None
