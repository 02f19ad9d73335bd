"""Orchestrates a run: preflight, crawl, shard, run shards on the cluster, publish, report."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mountproc._cluster import client as _cluster
from mountproc._cluster import placement as _placement
from mountproc._errors import (
    DiskFullError,
    MountError,
    MountprocError,
)
from mountproc._job import Job
from mountproc._listing.listing import ListingStats, Patterns, write_listing
from mountproc._listing.sharding import Plan, ShardBounds, iter_shards, write_plan
from mountproc._listing.testmode import write_test_listing
from mountproc._mounts.preflight import DirReport, MountReport, check_output_dir, check_source
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._mounts.table import DISK_FULL_ERRNOS, show
from mountproc._outputs import metadata as _metadata
from mountproc._outputs.resume import RunPaths, begin, remove_published, write_state
from mountproc._records import (
    FileResult,
    JobRef,
    Limits,
    ShardResult,
    ShardSpec,
    Status,
    WorkerCheck,
)
from mountproc._settings import ResolvedRun
from mountproc._shard.tar import publish
from mountproc._shard.worker import run_shard

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
T = TypeVar("T")
TEST_MODE_TAG = "mountproc-test-mode"
TOKEN_NAME = ".mountproc-token"  # in scratch: a worker that reads it shares this scratch


@dataclass
class Tally:
    """Running counts of a run."""

    shards_total: int = 0
    files_total: int = 0
    shards_done: int = 0
    shards_failed: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    not_selected: int = 0  # entries the listing skipped (symlinks, patterns...): never shards
    records: list[_metadata.ShardRecord] = field(default_factory=list)

    def reuse(self, finished: dict[int, _metadata.ShardRecord]) -> None:
        """Count the shards an earlier run of the same command finished."""
        for record in finished.values():
            self.records.append(record)
            self.shards_done += 1
            self.ok += record.files_ok
            self.failed += record.files_failed
            self.skipped += record.files_skipped

    def add(self, results: tuple[FileResult, ...]) -> None:
        """Count one shard's file results."""
        for r in results:
            if r.status is Status.OK:
                self.ok += 1
            elif r.status is Status.FAILED:
                self.failed += 1
            else:
                self.skipped += 1


@dataclass(frozen=True)
class RunReport:
    """What a run did; ``within_budget`` decides the exit code."""

    summary: dict[str, Any]
    within_budget: bool


@dataclass(frozen=True)
class Preflight:
    """What the preflight found: the source's mount, and scratch and outputs."""

    mount: MountReport
    dirs: tuple[DirReport, ...]

    def as_dict(self) -> dict[str, Any]:
        """The facts for the run summary."""
        return {"mount": self.mount.as_dict(), **{d.role: d.as_dict() for d in self.dirs}}


def preflight_source(job: Job, run: ResolvedRun) -> MountReport:
    """Check the source mount before anything is started or written."""
    s = run.settings
    report, warnings = check_source(
        run.source,
        declared_readonly=job.readonly,
        strict=run.strict_mounts,
        allow_writable=s.allow_writable,
        allow_empty=s.allow_empty,
        timeout=s.mount_timeout,
    )
    for w in warnings:
        log.warning("%s", w)
    return report


def preflight(job: Job, run: ResolvedRun) -> Preflight:
    """Check the source mount, scratch and outputs before anything is started or written."""
    s = run.settings
    report = preflight_source(job, run)
    dirs = []
    for role, path in (("outputs", run.outputs), ("scratch", run.scratch)):
        if _is_within(path, run.source):
            raise MountError(
                f"{role} directory {show(path)} is inside the source {show(run.source)}: it "
                f"would be crawled as input; choose --{role} outside the source"
            )
        dirs.append(check_output_dir(path, role, int(s.min_free_space), s.mount_timeout))
    return Preflight(report, tuple(dirs))


def check_cluster(job: Job, run: ResolvedRun, checked: Preflight) -> int:
    """Connect to ``--scheduler`` and check every worker's view of the mounts; return how many
    workers were checked. Writes only a token file in scratch, removed again with the
    directories made for it."""
    paths = RunPaths(run, job)
    made = [d for d in (paths.root, *paths.root.parents) if not d.exists()]
    paths.root.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            client, _ = _connect(stack, run, paths, checked.mount)
            return _cluster.worker_count(client)
    finally:
        (paths.root / TOKEN_NAME).unlink(missing_ok=True)
        for directory in made:  # deepest first; a worker may have written there meanwhile
            with contextlib.suppress(OSError):
                directory.rmdir()


def _is_within(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def run_job(job: Job, ref: JobRef, run: ResolvedRun, progress: Progress | None = None) -> RunReport:
    """Run ``job`` end to end; per-file failures are counted, never raised. A run stopped by
    Ctrl-C, SIGTERM or a failing environment still publishes what is complete, then raises."""
    started = time.monotonic()
    checked = preflight(job, run)
    paths = RunPaths(run, job)
    begun = begin(paths, run, ref)
    s = run.settings
    stop: BaseException | None = None
    with ExitStack() as stack:
        client = check = None
        if begun.plan is None and _placement.crawl_on_cluster(run):  # the workers list the tree too
            client, check = _connect(stack, run, paths, checked.mount)
        plan, entries = begun.plan or list_and_shard(
            job, run, paths, begun.state, checked.mount, client
        )
        skips = entries - plan.files
        tally = Tally(plan.shards, plan.files, skipped=skips, not_selected=skips)
        tally.reuse(begun.finished)
        if client is None or check is None:
            client, check = _connect(stack, run, paths, checked.mount)
        remove_published(begun.replaced)
        paths.outputs.mkdir(parents=True, exist_ok=True)
        specs = _specs(job, ref, run, paths, check, set(begun.finished))
        try:
            _execute(client, run, paths, specs, tally, progress)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (a subclass)
            stop = exc
            log.warning("interrupted: publishing what is complete")
        except MountprocError as exc:  # every further shard would fail the same way
            stop = exc
            log.error("stopping the run: %s", exc)
    within = s.budget.allows(tally.failed, plan.files) and stop is None
    summary = _summary(job, run, checked, plan, tally, entries, time.monotonic() - started, within)
    summary["stopped_by"] = None if stop is None else f"{type(stop).__name__}: {stop}"
    summary["shards_reused"] = len(begun.finished)
    _finish_safely(job, run, paths, tally, summary, within, stop)
    if stop is not None:
        raise stop
    return RunReport(summary, within)


def _finish_safely(
    job: Job,
    run: ResolvedRun,
    paths: RunPaths,
    tally: Tally,
    summary: dict[str, Any],
    within: bool,
    stop: BaseException | None,
) -> None:
    """Publish the manifest, summary and metadata; after a stop, a failure to do so (a full
    disk) must not hide the reason the run stopped."""
    try:
        _disk_full_is_an_error(lambda: _finish(job, run, paths, tally, summary, within))
    except MountprocError as exc:
        if stop is None:
            raise
        log.error("could not publish the manifest and summary: %s", exc)


def _worker_check(run: ResolvedRun, paths: RunPaths, mount: MountReport) -> WorkerCheck:
    """What every worker must see as this process does; writes the scratch token."""
    token_path = paths.root / TOKEN_NAME
    token = uuid.uuid4().hex
    token_path.write_text(token)
    view = mount.view()
    return WorkerCheck(str(run.source), view, str(token_path), token, run.settings.mount_timeout)


def _connect(
    stack: ExitStack, run: ResolvedRun, paths: RunPaths, mount: MountReport
) -> tuple[_cluster.Client, WorkerCheck]:
    """Start or reach the cluster (closed with ``stack``) and check every worker's view."""
    client = stack.enter_context(_cluster.open_cluster(_placement.cluster_options(run)))
    check = _worker_check(run, paths, mount)
    _cluster.check_workers(client, check)
    return client, check


def list_and_shard(
    job: Job,
    run: ResolvedRun,
    paths: RunPaths,
    state: dict[str, Any],
    mount: MountReport,
    client: _cluster.Client | None,
) -> tuple[Plan, int]:
    """List the source into ``paths`` (on the cluster when ``client`` is given) and shard it;
    return the plan and the number of entries listed (``run`` and ``plan`` share this)."""
    stats = _list(job, run, paths, mount, client)
    bounds = ShardBounds(run.settings.shard_max_files, int(run.settings.shard_max_bytes))
    plan = write_plan(paths.listing, paths.plan, bounds)
    log.info("%d files (%d bytes) in %d shard(s)", plan.files, plan.bytes, plan.shards)
    if plan.files == 0 and not run.settings.allow_empty:
        raise MountError(
            f"no files to process under {show(run.source)} ({stats.entries} entries listed, "
            "none selected): check the source and the job's include/exclude patterns, or pass "
            "--allow-empty"
        )
    totals = {"shards": plan.shards, "files": plan.files, "bytes": plan.bytes}
    write_state(paths.root, {**state, "listed": {**totals, "entries": stats.entries}})
    return plan, stats.entries


def _list(
    job: Job, run: ResolvedRun, paths: RunPaths, mount: MountReport, client: _cluster.Client | None
) -> ListingStats:
    """List the source into ``paths.listing``: in test mode only the subset, found without
    listing the whole tree."""
    patterns = Patterns(job.include, job.exclude)
    s = run.settings
    with SourceWatch(run.source, s.mount_timeout, "the listing") as watch:
        if s.test_mode:
            return watch.run(
                lambda: write_test_listing(
                    run.source, patterns, paths.listing, s.test_size, watch.probe
                )
            )
        with _placement.lister(run, mount, client) as executor:
            return watch.run(
                lambda: write_listing(run.source, patterns, paths.listing, watch.probe, executor)
            )


def _specs(
    job: Job, ref: JobRef, run: ResolvedRun, paths: RunPaths, check: WorkerCheck, done: set[int]
) -> Iterator[ShardSpec]:
    params_json = run.params.model_dump_json()
    limits = Limits(run.settings.file_timeout, run.settings.mount_timeout)
    for index, entries in iter_shards(paths.plan):
        if index in done:
            continue
        yield ShardSpec(
            index,
            ref,
            params_json,
            str(run.source),
            str(paths.shards),
            paths.tar_name(index),
            entries,
            check,
            limits,
        )


def _execute(
    client: _cluster.Client,
    run: ResolvedRun,
    paths: RunPaths,
    specs: Iterator[ShardSpec],
    tally: Tally,
    progress: Progress | None,
) -> None:
    threads = run.settings.threads_per_worker
    window = 2 * max(1, _cluster.worker_count(client)) * threads
    stream = _cluster.TaskStream(
        client,
        run_shard,
        specs,
        key=lambda spec: f"mountproc-{paths.tar_prefix}{spec.index:06d}-{spec.job.digest[:8]}",
        window=window,
    )
    timeout = run.settings.mount_timeout
    if progress is not None:  # the starting point: what earlier runs already did
        progress(_progress_event(tally))
    try:
        with (
            SourceWatch(run.source, timeout, "the run", on_lost=stream.cancel) as watch,
            _cluster.WorkerWatch(client, run.settings.worker_wait, stream.cancel) as workers,
        ):
            for spec, outcome, worker in stream:
                watch.check()
                workers.check()
                # a tar is published together with its record, or not at all
                # a copy may take long: Ctrl-C interrupts it (the shard is redone on a rerun)
                brought = _disk_full_is_an_error(
                    partial(_placement.brought, client, paths, outcome, worker)
                )
                collect = partial(_collect, paths, spec, brought, tally)
                _shielded(partial(_disk_full_is_an_error, collect))
                if progress is not None:
                    progress(_progress_event(tally))
    finally:  # on a stop, cancel the shards in flight while the cluster is still up
        stream.cancel()


def _disk_full_is_an_error(fn: Callable[[], T]) -> T:
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


def _shielded(fn: Callable[[], None]) -> None:
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


def _collect(
    paths: RunPaths, spec: ShardSpec, outcome: ShardResult | BaseException, tally: Tally
) -> None:
    if isinstance(outcome, MountprocError):
        raise outcome  # a broken setup, a worker's mount, a full disk: every shard would fail
    if isinstance(outcome, BaseException):
        reason = f"shard {spec.index} failed: {type(outcome).__name__}: {outcome}".strip()
        log.error("%s", reason)
        results = tuple(FileResult(e.path, Status.FAILED, reason[:500]) for e in spec.entries)
        _metadata.write_results(_metadata.results_path(paths.results, spec.index), results)
        tally.shards_failed += 1
        tally.add(results)
        return
    publish(Path(outcome.tar_path), paths.outputs / spec.tar_name)
    _metadata.write_results(_metadata.results_path(paths.results, spec.index), outcome.results)
    record = _metadata.shard_record(outcome)
    _metadata.write_record(_metadata.record_path(paths.results, spec.index), record)
    tally.records.append(record)
    tally.shards_done += 1
    tally.add(outcome.results)


def _progress_event(tally: Tally) -> dict[str, Any]:
    return {
        "shards_done": tally.shards_done + tally.shards_failed,
        "shards_total": tally.shards_total,
        "files_done": tally.ok + tally.failed + tally.skipped - tally.not_selected,
        "files_ok": tally.ok,
        "files_failed": tally.failed,
        "files_skipped": tally.skipped - tally.not_selected,
        "files_total": tally.files_total,
    }


def _summary(
    job: Job,
    run: ResolvedRun,
    checked: Preflight,
    plan: Plan,
    tally: Tally,
    entries: int,
    seconds: float,
    within: bool,
) -> dict[str, Any]:
    s = run.settings
    return {
        "job": job.name,
        "source": str(run.source),
        **checked.as_dict(),
        "test_mode": s.test_mode,
        "entries_listed": entries,
        "files_selected": plan.files,
        "bytes_selected": plan.bytes,
        "files_ok": tally.ok,
        "files_failed": tally.failed,
        "files_skipped": tally.skipped,
        "files_not_processed": entries - tally.ok - tally.failed - tally.skipped,
        "shards": plan.shards,
        "shards_published": tally.shards_done,
        "shards_failed": tally.shards_failed,
        "max_failures": str(s.budget),
        "within_budget": within,
        "dataset": s.dataset if within and _dataset_target(run) else None,
        "params": run.params.model_dump(mode="json"),
        "seconds": round(seconds, 3),
        "files_per_s": round(plan.files / seconds, 1) if seconds > 0 else None,
    }


def _finish(
    job: Job, run: ResolvedRun, paths: RunPaths, tally: Tally, summary: dict[str, Any], within: bool
) -> None:
    """Publish the manifest, the summary, the wids index and the Valohai metadata (dataset
    entries only when the run is within its failure budget and not in test mode)."""
    records = sorted(tally.records, key=lambda r: r.index)
    manifest = paths.root / paths.manifest
    _metadata.write_manifest(paths.plan, paths.results, {r.index: r.tar for r in records}, manifest)
    publish(manifest, paths.outputs / paths.manifest)
    for name, data in (
        (paths.summary, summary),
        (paths.index, _metadata.wids_index(job.name, records)),
    ):
        _metadata.write_json(paths.root / name, data)
        publish(paths.root / name, paths.outputs / name)
    lines = _metadata.metadata_lines(
        records,
        [paths.manifest, paths.summary, paths.index],
        _dataset_target(run) if within else None,
        [TEST_MODE_TAG] if run.settings.test_mode else [],
        {"mountproc.job": job.name, "source": str(run.source)},
    )
    meta = paths.root / _metadata.METADATA_NAME
    meta.write_text("".join(line + "\n" for line in lines))
    publish(meta, paths.outputs / _metadata.METADATA_NAME)


def _dataset_target(run: ResolvedRun) -> _metadata.DatasetTarget | None:
    s = run.settings
    if s.test_mode or not s.dataset:
        return None
    return _metadata.DatasetTarget(
        s.dataset, s.dataset_start_fresh, s.dataset_from, s.dataset_aliases
    )
