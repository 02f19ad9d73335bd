"""The listing stage of a run: where the tree is listed (the cluster, threads, or serially), the
source listed into Parquet (only the subset in test mode), then cut into shards."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from mountproc._errors import MountError
from mountproc._job import DEFAULT_EXCLUDES, Job
from mountproc._listing.inputs import write_input_listing
from mountproc._listing.listing import ListingStats, Patterns, write_listing
from mountproc._listing.sharding import Plan, ShardBounds, write_plan
from mountproc._listing.testmode import write_test_listing
from mountproc._mounts.source import MountReport
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._mounts.table import note_stuck, show
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)

Lister = Callable[[], AbstractContextManager[Executor | None]]
"""Where the crawl's directory tasks run: a cluster, threads, or (None) serially here."""


def list_and_shard(
    job: Job, run: ResolvedRun, listing: Path, plan_path: Path, lister: Lister
) -> tuple[Plan, int]:
    """List the source into ``listing`` and shard it into ``plan_path``; return the plan and
    the number of entries listed (``run`` and ``plan`` share this)."""
    stats = list_source(job, run, listing, lister)
    bounds = ShardBounds(run.settings.shard_max_files, int(run.settings.shard_max_bytes))
    plan = write_plan(listing, plan_path, bounds)
    log.info("%d files (%d bytes) in %d shard(s)", plan.files, plan.bytes, plan.shards)
    if plan.files == 0 and not run.settings.allow_empty:
        raise MountError(
            f"no files to process under {show(run.source)} ({stats.entries} entries listed, "
            "none selected): check the source and the job's include/exclude patterns, or pass "
            "--allow-empty"
        )
    return plan, stats.entries


def job_patterns(job: Job) -> Patterns:
    """What the job selects: its include and exclude patterns, and the default excludes."""
    return Patterns(job.include, job.exclude, DEFAULT_EXCLUDES if job.default_excludes else ())


def list_source(job: Job, run: ResolvedRun, listing: Path, lister: Lister) -> ListingStats:
    """List the source: in test mode only the subset, found without listing the whole tree."""
    patterns = job_patterns(job)
    s = run.settings
    if run.on_demand is not None:  # listed in inputs.json: nothing to crawl
        size = s.test_size if s.test_mode else None
        return write_input_listing(run.on_demand.files, patterns, listing, size)
    with SourceWatch(run.source, s.mount_timeout, "the listing") as watch:
        if s.test_mode:
            return watch.run(
                lambda: write_test_listing(run.source, patterns, listing, s.test_size, watch.probe)
            )
        with lister() as executor:
            return watch.run(
                lambda: write_listing(run.source, patterns, listing, watch.probe, executor)
            )


def entries_listed(job: Job, run: ResolvedRun, lister: Lister, listing: Path) -> int:
    """List the source into ``listing``; the number of entries listed."""
    return list_source(job, run, listing, lister).entries


CRAWL_THREADS = 16
"""Threads that list a network file system from the driver: each READDIR or stat is a round
trip, which threads overlap."""


@contextmanager
def lister(
    run: ResolvedRun, mount: MountReport, cluster: Executor | None
) -> Iterator[Executor | None]:
    """Where the crawl's directory tasks run: the cluster, threads, or (None) serially here."""
    if cluster is not None:
        log.info("listing the source on the cluster's workers")
        yield cluster
        return
    threads = run.settings.crawl_threads or (1 if mount.kind == "local" else CRAWL_THREADS)
    if threads <= 1:  # on a local disk a serial crawl is fastest (the GIL, no round trips)
        yield None
        return
    log.info("listing the source with %d threads (a %s file system)", threads, mount.kind)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mountproc-list")
    try:
        yield pool
    except BaseException:  # a hung mount may hold a thread forever: abandon it
        pool.shutdown(wait=False, cancel_futures=True)
        listing = [t for t in threading.enumerate() if t.name.startswith("mountproc-list")]
        for thread in listing:  # idle ones end at once; a blocked one is left behind
            thread.join(timeout=1.0)
        if any(thread.is_alive() for thread in listing):
            note_stuck("a listing thread")
        raise
    pool.shutdown(wait=True)
