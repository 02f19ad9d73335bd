"""Timing a few files of the tree, each as a one-file shard in a process of its own, as a worker
runs shards: a crash, the out-of-memory killer or the watchdog takes that process, not the
command; a dead process fails its file and is replaced."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from mountproc._errors import JobSetupError, MountprocError
from mountproc._listing.sharding import subset_entries, test_subset
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._outputs.layout import RunPaths
from mountproc._records import FileEntry, JobRef, Limits, ShardResult, ShardSpec, Status
from mountproc._resolve import ResolvedRun
from mountproc._shard.worker import run_shard
from mountproc._valohai.inputs import remote_files

log = logging.getLogger(__name__)

POLL_S = 0.2
"""How often the wait for a sampled file checks that the source mount still answers."""


@dataclass(frozen=True)
class Timings:
    """What the timing process measured."""

    seconds: tuple[float, ...]  # one per file, in the order timed
    failed: int
    first_error: str | None
    setup_s: float


def time_files(ref: JobRef, run: ResolvedRun, paths: RunPaths, count: int) -> Timings:
    """Run up to ``count`` files, taken round-robin over the tree's directories as test mode
    takes them, each as a shard of its own, timed in the timing process."""
    entries = [(one,) for one in subset_entries(paths.listing, test_subset(paths.listing, count))]
    s = run.settings
    limits = Limits(s.file_timeout, s.mount_timeout)
    params_json = run.params.model_dump_json()

    def spec(index: int, entries: tuple[FileEntry, ...]) -> ShardSpec:
        tar = f"timed-{index:06d}.tar"
        work = str(paths.shards)
        remote = remote_files(run.on_demand, entries)  # an on-demand input's: downloaded
        return ShardSpec(
            index, ref, params_json, str(run.source), work, tar, entries, None, limits,
            remote=remote,
        )  # fmt: skip

    specs = [spec(index, one) for index, one in enumerate(entries)]
    if not specs:
        return Timings((), 0, None, 0.0)
    log.info("timing %d file(s), each alone, in a process of their own", len(specs))
    with SourceWatch(run.watched, s.mount_timeout, "timing files") as watch:
        timer = _Timer(spec(len(specs), ()), watch, s.file_timeout)
        try:
            return timer.time_all(specs)
        finally:
            timer.close()


class _Timer:
    """Times one-file shards in a timing process, replacing the process when one dies; the
    first shard of every process is an empty one, so that job setup is timed apart."""

    def __init__(self, warmup: ShardSpec, watch: SourceWatch, file_timeout: float) -> None:
        self.warmup = warmup
        self.watch = watch
        self.file_timeout = file_timeout
        self.process: _TimingProcess | None = None
        self.setup_s: float | None = None

    def time_all(self, specs: Sequence[ShardSpec]) -> Timings:
        """Time every spec; a failed file is counted, its first reason kept."""
        seconds: list[float] = []
        errors: list[str] = []
        for spec in specs:
            elapsed, failures = self._time_one(spec)
            seconds.append(elapsed)
            errors += failures
        first = errors[0] if errors else None
        return Timings(tuple(seconds), len(errors), first, self.setup_s or 0.0)

    def _time_one(self, spec: ShardSpec) -> tuple[float, list[str]]:
        """The shard's time, and the reasons of its failed files."""
        process = self._started()
        started = time.perf_counter()
        outcome = process.run(spec, self.watch)
        if outcome is None:
            elapsed = time.perf_counter() - started
            self.close()  # its watchdog killed it, or it crashed: the next file gets a fresh one
            return elapsed, [self._death_reason(elapsed)]
        seconds, result = outcome
        return seconds, [r.error or "failed" for r in result.results if r.status is Status.FAILED]

    def _started(self) -> _TimingProcess:
        if self.process is not None:
            return self.process
        self.process = _TimingProcess()
        outcome = self.process.run(self.warmup, self.watch)
        if outcome is None:
            raise JobSetupError(
                f"{self.warmup.job.filename}: the process running the job's setup died "
                f"(exit code {self.process.exitcode()})"
            )
        if self.setup_s is None:
            self.setup_s = outcome[0]
        return self.process

    def _death_reason(self, elapsed: float) -> str:
        if 0 < self.file_timeout <= elapsed:
            return f"took longer than --file-timeout={self.file_timeout:g}s"
        return (
            "its process died while processing it (a crash in native code, os._exit, or the "
            "out-of-memory killer)"
        )

    def close(self) -> None:
        """Stop the timing process, if one runs."""
        if self.process is not None:
            self.process.close()
            self.process = None


class _TimingProcess:
    """A process of its own (spawned: this process has threads) that runs the shards it is
    sent, as a worker process would, and answers with each one's time and result."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="mountproc-timing")
        self._process.start()
        child.close()  # so that its death reads as the end of the pipe here

    def run(self, spec: ShardSpec, watch: SourceWatch) -> tuple[float, ShardResult] | None:
        """Time ``spec`` there; None when the process died meanwhile. Raises what the shard
        raised (a broken setup, a lost mount, a full disk) and a lost source mount."""
        try:
            self._conn.send(spec)
            while not self._conn.poll(POLL_S):
                watch.check()
            answer: tuple[float, ShardResult] | Exception = self._conn.recv()
        except (EOFError, ConnectionError):  # the pipe's other end died with the process
            self._process.join()
            return None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def exitcode(self) -> int | None:
        """The process's exit code, once it ended."""
        return self._process.exitcode

    def close(self) -> None:
        """End the process at once: it may be stuck in a file on a hung mount."""
        self._conn.close()
        self._process.kill()
        self._process.join()
        self._process.close()


def _serve(conn: Connection) -> None:
    """In the timing process: run each shard sent until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command, which ends this
    while True:
        try:
            spec = conn.recv()
        except EOFError:
            return
        conn.send(_timed(spec))


def _timed(spec: ShardSpec) -> tuple[float, ShardResult] | Exception:
    """Run one shard and time it; remove its tar."""
    started = time.perf_counter()
    try:
        result = run_shard(spec)
    except MountprocError as exc:  # a broken setup, a lost mount, a full disk: stops the plan
        return exc
    except Exception as exc:  # a bug: one line, as the command reports internal errors
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - started
    Path(result.tar_path).unlink()
    return seconds, result
