"""``mountproc plan``: crawl and shard the source as a run would, time the transform on a few
files spread over the tree, and estimate the run; nothing is written to scratch or outputs.

The listing and the plans go to a temporary directory under the system's temp directory,
removed at the end. The timed files run in a process of their own, one one-file shard at a time,
exactly as a worker runs shards: the worker's watchdog kills its process when a file overruns
``--file-timeout``, and a crash in native code or the OOM killer must not take this process
(the command) with it. A killed timing process fails its file and is replaced.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from mountproc._job import Job
from mountproc._listing.sharding import Plan, ShardBounds, batches, subset_plan, test_subset
from mountproc._listing.stage import Lister, entries_listed, list_and_shard, lister
from mountproc._mounts.preflight import preflight_source
from mountproc._outputs.increment import Increment
from mountproc._outputs.layout import RunPaths
from mountproc._outputs.lineage import Lineage, lineage, plan_increment
from mountproc._planning.timing import time_files
from mountproc._records import JobRef
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)

TIMED_FILES = 8


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
    timed_files: int  # files timed
    timed_failed: int
    timed_error: str | None  # the first timed file's failure reason
    setup_s: float  # a fresh process: loading the job file and running its setup, once
    per_file_s: float | None  # median over the timed files; None when none was
    workers: int  # of the run's cluster: --workers, the cores, or an existing cluster's
    threads: int  # tasks at once: workers x --threads-per-worker, or an existing cluster's
    estimate_s: float | None  # per_file_s * files / threads
    listing_s: float  # listing and sharding
    increment: Increment | None = None  # with --since/--retry-failed: what changed
    since: str | None = None  # the earlier run's manifest


def plan_job(job: Job, ref: JobRef, run: ResolvedRun, timed: int = TIMED_FILES) -> PlanReport:
    """Check the source as ``run`` does, list and shard it, and time ``timed`` files spread over
    the tree; scratch and outputs are neither created nor written."""
    line = lineage(run, job.name)
    mount = preflight_source(run, job.readonly)
    s = run.settings
    with tempfile.TemporaryDirectory(prefix="mountproc-plan-") as tmp:
        # the whole tree, sharded as a run without --test-mode shards it, in the temp directory
        whole = replace(run, scratch=Path(tmp), settings=s.model_copy(update={"test_mode": False}))
        paths = RunPaths(whole.outputs, whole.scratch, job.name)
        paths.shards.mkdir(parents=True)
        started = time.perf_counter()
        plan, entries, found = _listed(job, whole, paths, partial(lister, whole, mount, None), line)
        listing_s = time.perf_counter() - started
        paths.plan.unlink()  # a copy of the listing: its totals are all that is needed
        test = _test_plan(paths.listing, run)
        timings = time_files(ref, run, paths, timed)
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
        largest_shard_files=plan.largest_files,
        largest_shard_bytes=plan.largest_bytes,
        test_size=s.test_size,
        test_files=test.files,
        test_shards=test.shards,
        timed_files=len(timings.seconds),
        timed_failed=timings.failed,
        timed_error=timings.first_error,
        setup_s=timings.setup_s,
        per_file_s=per_file,
        workers=workers,
        threads=threads,
        estimate_s=None if per_file is None else per_file * plan.files / threads,
        listing_s=listing_s,
        increment=found,
        since=str(line.previous.manifest) if line.previous is not None else None,
    )


def _listed(
    job: Job, run: ResolvedRun, paths: RunPaths, where: Lister, line: Lineage
) -> tuple[Plan, int, Increment | None]:
    """List and shard as the run would: the whole tree, or an increment's changes."""
    if line.previous is None:
        return (*list_and_shard(job, run, paths.listing, paths.plan, where), None)
    return plan_increment(line, run, paths, partial(entries_listed, job, run, where))


def _test_plan(listing: Path, run: ResolvedRun) -> Plan:
    """The totals of the plan ``--test-mode`` with the run's ``--test-size`` would make."""
    s = run.settings
    bounds = ShardBounds(s.shard_max_files, int(s.shard_max_bytes))
    return subset_plan(listing, test_subset(listing, s.test_size), bounds)


def _skip_reasons(listing: Path) -> tuple[tuple[str, int], ...]:
    """How many listed entries were skipped for each reason, most common first (counted batch
    by batch: a listing's reasons are nearly all null, and there are few distinct ones)."""
    counts: dict[str, int] = {}
    for batch in batches(listing, ["skip_reason"]):
        reasons = batch.column(0)
        if reasons.null_count == len(reasons):
            continue
        for row in reasons.value_counts().to_pylist():
            if row["values"] is not None:
                counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return tuple(sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))


def _capacity(run: ResolvedRun) -> tuple[int, int]:
    """The workers and threads the run would have: an existing cluster's are counted."""
    s = run.settings
    if s.scheduler and run.distributed is None:
        from mountproc._cluster.client import open_cluster  # Dask only for a cluster
        from mountproc._cluster.placement import cluster_options
        from mountproc._cluster.stream import thread_count, worker_count

        with open_cluster(cluster_options(run)) as client:
            return worker_count(client), thread_count(client)
    workers = s.workers or os.cpu_count() or 1
    return workers, workers * s.threads_per_worker
