"""``mountproc plan``: crawl and shard the source as a run would, time the transform on a small
sample of files, and estimate the run; nothing is written to scratch or outputs.

The listing and the plans go to a temporary directory under the system's temp directory,
removed at the end. The sample runs in a process of its own, one one-file shard at a time,
exactly as a worker runs shards: the worker's watchdog kills its process when a file overruns
``--file-timeout``, and a crash in native code or the OOM killer must not take this process
(the command) with it. A killed sampling process fails its file and is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc._cluster import client as _cluster
from mountproc._cluster import placement as _placement
from mountproc._errors import JobSetupError, MountprocError
from mountproc._job import Job
from mountproc._listing.sharding import Plan, ShardBounds, iter_shards, test_subset, write_plan
from mountproc._mounts.preflight import human_bytes
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._outputs.resume import RunPaths
from mountproc._records import FileEntry, JobRef, Limits, ShardResult, ShardSpec, Status
from mountproc._runner import list_and_shard, preflight_source
from mountproc._settings import ResolvedRun
from mountproc._shard.worker import run_shard

log = logging.getLogger(__name__)

SAMPLE_FILES = 8
POLL_S = 0.2
"""How often the wait for a sampled file checks that the source mount still answers."""
ONE_FILE = ShardBounds(1, 1 << 62)
"""Bounds that put every sampled file into a shard of its own, so each is timed alone."""
ESTIMATE_RULE = "per-file median x files / threads"
ESTIMATE_CAVEAT = (
    "tar writing and a network mount add to it; threads beyond the cores help only a transform "
    "that waits or releases the GIL"
)


@dataclass(frozen=True)
class PlanReport:
    """What ``mountproc plan`` found: the run's figures, the test-mode subset, the sample's
    timing and the estimate derived from it."""

    source: str
    mount: str  # "<fstype> <export>, <kind>"
    entries: int  # entries listed
    files: int  # files selected
    bytes: int  # bytes of the files selected
    skipped: tuple[tuple[str, int], ...]  # (reason, entries), most common first
    shards: int
    largest_shard_files: int  # the most files in any shard
    largest_shard_bytes: int  # the most bytes in any shard
    test_size: int  # --test-size
    test_files: int  # files --test-mode would process
    test_shards: int
    sample_files: int  # files timed
    sample_failed: int
    sample_error: str | None  # the first sampled file's failure reason
    setup_s: float  # a fresh process: loading the job file and running its setup, once
    per_file_s: float | None  # median over the sample; None when nothing was timed
    workers: int  # of the run's cluster: --workers, the cores, or an existing cluster's
    threads: int  # tasks at once: workers x --threads-per-worker, or an existing cluster's
    estimate_s: float | None  # per_file_s * files / threads
    listing_s: float  # listing and sharding


@dataclass(frozen=True)
class _Timings:
    """What the sampling process measured."""

    seconds: tuple[float, ...]  # one per file, in sample order
    failed: int
    first_error: str | None
    setup_s: float


def plan_job(job: Job, ref: JobRef, run: ResolvedRun, sample: int = SAMPLE_FILES) -> PlanReport:
    """Check the source as ``run`` does, list and shard it, and time ``sample`` files spread over
    the tree; scratch and outputs are neither created nor written."""
    mount = preflight_source(job, run)
    s = run.settings
    with tempfile.TemporaryDirectory(prefix="mountproc-plan-") as tmp:
        # the whole tree, sharded as a run without --test-mode shards it, in the temp directory
        whole = replace(run, scratch=Path(tmp), settings=s.model_copy(update={"test_mode": False}))
        paths = RunPaths(whole, job)
        paths.shards.mkdir(parents=True)
        started = time.perf_counter()
        plan, entries = list_and_shard(job, whole, paths, {}, mount, None)
        listing_s = time.perf_counter() - started
        largest = _largest_shard(paths.plan)
        paths.plan.unlink()  # each plan is a copy of the listing: keep one at a time
        test = _test_plan(paths, run)
        timings = _time_sample(ref, run, paths, sample)
        skipped = _skip_reasons(paths.listing)
    workers, threads = _capacity(run)
    per_file = statistics.median(timings.seconds) if timings.seconds else None
    return PlanReport(
        source=str(run.source),
        mount=f"{mount.fstype} {mount.source}, {mount.kind}",
        entries=entries,
        files=plan.files,
        bytes=plan.bytes,
        skipped=skipped,
        shards=plan.shards,
        largest_shard_files=largest[0],
        largest_shard_bytes=largest[1],
        test_size=s.test_size,
        test_files=test.files,
        test_shards=test.shards,
        sample_files=len(timings.seconds),
        sample_failed=timings.failed,
        sample_error=timings.first_error,
        setup_s=timings.setup_s,
        per_file_s=per_file,
        workers=workers,
        threads=threads,
        estimate_s=None if per_file is None else per_file * plan.files / threads,
        listing_s=listing_s,
    )


def _largest_shard(plan: Path) -> tuple[int, int]:
    """The most files and the most bytes of any shard of a plan."""
    totals: dict[int, tuple[int, int]] = {}
    for batch in pq.ParquetFile(plan).iter_batches(columns=["shard", "size"]):
        grouped = pa.Table.from_batches([batch]).group_by("shard")
        for row in grouped.aggregate([("size", "count"), ("size", "sum")]).to_pylist():
            if row["shard"] is None:  # a skipped entry
                continue
            files, size = totals.get(row["shard"], (0, 0))
            totals[row["shard"]] = (files + row["size_count"], size + row["size_sum"])
    files = max((f for f, _ in totals.values()), default=0)
    return files, max((b for _, b in totals.values()), default=0)


def _test_plan(paths: RunPaths, run: ResolvedRun) -> Plan:
    """The totals of the plan ``--test-mode`` with the run's ``--test-size`` would make."""
    s = run.settings
    bounds = ShardBounds(s.shard_max_files, int(s.shard_max_bytes))
    out = paths.root / "test-plan.parquet"
    test = write_plan(paths.listing, out, bounds, test_subset(paths.listing, s.test_size))
    out.unlink()
    return test


def _skip_reasons(listing: Path) -> tuple[tuple[str, int], ...]:
    """How many listed entries were skipped for each reason, most common first."""
    reasons = pq.read_table(listing, columns=["skip_reason"]).column("skip_reason")
    counts = [(r["values"], r["counts"]) for r in reasons.value_counts().to_pylist()]
    return tuple(sorted(((v, n) for v, n in counts if v is not None), key=lambda p: (-p[1], p[0])))


def _time_sample(ref: JobRef, run: ResolvedRun, paths: RunPaths, sample: int) -> _Timings:
    """Run up to ``sample`` files, taken round-robin over the tree's directories as test mode
    takes them, each as a shard of its own, timed in the sampling process."""
    picked = paths.root / "sample-plan.parquet"
    write_plan(paths.listing, picked, ONE_FILE, test_subset(paths.listing, sample))
    entries = [entries for _, entries in iter_shards(picked)]
    picked.unlink()
    s = run.settings
    limits = Limits(s.file_timeout, s.mount_timeout)
    params_json = run.params.model_dump_json()

    def spec(index: int, entries: tuple[FileEntry, ...]) -> ShardSpec:
        tar = f"sample-{index:06d}.tar"
        work = str(paths.shards)
        return ShardSpec(index, ref, params_json, str(run.source), work, tar, entries, None, limits)

    specs = [spec(index, one) for index, one in enumerate(entries)]
    if not specs:
        return _Timings((), 0, None, 0.0)
    log.info("timing %d sampled file(s), each alone, in a process of their own", len(specs))
    with SourceWatch(run.source, s.mount_timeout, "the sample") as watch:
        sampler = _Sampler(spec(len(specs), ()), watch, s.file_timeout)
        try:
            return sampler.time_all(specs)
        finally:
            sampler.close()


class _Sampler:
    """Times one-file shards in a sampling process, replacing the process when one dies; the
    first shard of every process is an empty one, so that job setup is timed apart."""

    def __init__(self, warmup: ShardSpec, watch: SourceWatch, file_timeout: float) -> None:
        self.warmup = warmup
        self.watch = watch
        self.file_timeout = file_timeout
        self.process: _SampleProcess | None = None
        self.setup_s: float | None = None

    def time_all(self, specs: Sequence[ShardSpec]) -> _Timings:
        """Time every spec; a failed file is counted, its first reason kept."""
        seconds: list[float] = []
        errors: list[str] = []
        for spec in specs:
            elapsed, failures = self._time_one(spec)
            seconds.append(elapsed)
            errors += failures
        first = errors[0] if errors else None
        return _Timings(tuple(seconds), len(errors), first, self.setup_s or 0.0)

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

    def _started(self) -> _SampleProcess:
        if self.process is not None:
            return self.process
        self.process = _SampleProcess()
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
        """Stop the sampling process, if one runs."""
        if self.process is not None:
            self.process.close()
            self.process = None


class _SampleProcess:
    """A process of its own (spawned: this process has threads) that runs the shards it is
    sent, as a worker process would, and answers with each one's time and result."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="mountproc-sample")
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
    """In the sampling process: run each shard sent until the pipe closes."""
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


def render(report: PlanReport) -> list[str]:
    """The report as aligned lines for the terminal."""
    rows = [
        ("source", f"{report.source} ({report.mount})"),
        ("listed", f"{report.entries:,} entries in {_seconds(report.listing_s)}"),
        *([("skipped", _skipped_text(report))] if report.skipped else []),
        ("files", _files_text(report)),
        ("test mode", _test_text(report)),
        ("sample", _sample_text(report)),
        ("estimate", _estimate_text(report)),
    ]
    if report.sample_files and report.sample_failed == report.sample_files:
        rows.append(
            (
                "warning",
                f"every sampled file failed ({report.sample_error}): the estimate means "
                "little; fix the job or check the source before a run",
            )
        )
    rows.append(("outputs", "nothing written"))
    return [f"{key:<12} {value}" for key, value in rows]


def _files_text(r: PlanReport) -> str:
    largest = (
        f"largest {_count(r.largest_shard_files, 'file')}, {human_bytes(r.largest_shard_bytes)}"
    )
    return f"{r.files:,} ({human_bytes(r.bytes)}) in {_count(r.shards, 'shard')}" + (
        f" ({largest})" if r.shards else ""
    )


def _skipped_text(r: PlanReport) -> str:
    total = sum(n for _, n in r.skipped)
    return f"{_count(total, 'entry', 'entries')}: " + ", ".join(
        f"{n:,} {reason}" for reason, n in r.skipped
    )


def _test_text(r: PlanReport) -> str:
    return (
        f"{_count(r.test_files, 'file')} in {_count(r.test_shards, 'shard')} "
        f"(--test-size {r.test_size})"
    )


def _sample_text(r: PlanReport) -> str:
    if r.per_file_s is None:
        return "no files to time"
    failed = f"{r.sample_failed} failed" + (f" (first: {r.sample_error})" if r.sample_error else "")
    return (
        f"{_count(r.sample_files, 'file')}: {_seconds(r.per_file_s)} per file (median), "
        f"setup {_seconds(r.setup_s)} per worker process; {failed}"
    )


def _capacity(run: ResolvedRun) -> tuple[int, int]:
    """The workers and threads the run would have: an existing cluster's are counted."""
    s = run.settings
    if s.scheduler and run.distributed is None:
        with _cluster.open_cluster(_placement.cluster_options(run)) as client:
            return _cluster.worker_count(client), _cluster.thread_count(client)
    workers = s.workers or os.cpu_count() or 1
    return workers, workers * s.threads_per_worker


def _estimate_text(r: PlanReport) -> str:
    if r.estimate_s is None:
        return "none (no files were timed)"
    return (
        f"{_duration(r.estimate_s)} on {_count(r.workers, 'worker')}, "
        f"{_count(r.threads, 'thread')} ({ESTIMATE_RULE}; {ESTIMATE_CAVEAT})"
    )


def _duration(seconds: float) -> str:
    """'under a second', 'about 40 s', 'about 4 min', 'about 2.5 h', 'about 3.1 days'."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.1f} h"
    return f"about {seconds / 86400:.1f} days"


def _seconds(seconds: float) -> str:
    """0.041 s, 2.5 s, 130 s: three significant digits."""
    return f"{seconds:.3g} s" if seconds < 1000 else f"{seconds:.0f} s"


def _count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"
