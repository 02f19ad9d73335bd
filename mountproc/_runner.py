"""Orchestrates a run: preflight, crawl, shard, run shards on the cluster, publish, report."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mountproc import _cluster, _metadata
from mountproc._errors import JobSetupError, MountError, OutputsNotEmptyError
from mountproc._job import Job
from mountproc._listing import Patterns, write_listing
from mountproc._mounts import MountReport, check_source, check_writable_dir
from mountproc._packaging import publish
from mountproc._records import FileResult, JobRef, ShardResult, ShardSpec, Status
from mountproc._settings import ResolvedRun
from mountproc._sharding import Plan, ShardBounds, iter_shards, test_subset, write_plan
from mountproc._worker import run_shard

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
TEST_MODE_TAG = "mountproc-test-mode"


@dataclass
class Tally:
    """Running counts of a run."""

    shards_done: int = 0
    shards_failed: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    records: list[_metadata.ShardRecord] = field(default_factory=list)

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


class _Paths:
    """The run's working area in scratch, and the names it publishes in outputs."""

    def __init__(self, run: ResolvedRun, job: Job) -> None:
        self.outputs = run.outputs
        self.root = run.scratch / job.name
        self.shards = self.root / "shards"
        self.results = self.root / "results"
        self.listing = self.root / "listing.parquet"
        self.plan = self.root / "plan.parquet"
        self.manifest = f"{job.name}-manifest.parquet"
        self.summary = f"{job.name}-summary.json"
        self.tar_prefix = f"{job.name}-"

    def tar_name(self, index: int) -> str:
        return f"{self.tar_prefix}{index:06d}.tar"

    def previous_outputs(self) -> list[Path]:
        """Files in outputs that an earlier run of this job published."""
        if not self.outputs.is_dir():
            return []
        names = {self.manifest, self.summary, _metadata.METADATA_NAME}
        return sorted(
            p
            for p in self.outputs.iterdir()
            if p.name in names or (p.name.startswith(self.tar_prefix) and p.name.endswith(".tar"))
        )


def preflight(job: Job, run: ResolvedRun) -> MountReport:
    """Check the source mount, scratch and outputs before anything is started or written."""
    report, warnings = check_source(
        run.source,
        declared_readonly=job.readonly,
        strict=run.strict_mounts,
        allow_writable=run.settings.allow_writable,
    )
    for w in warnings:
        log.warning("%s", w)
    for role, path in (("outputs", run.outputs), ("scratch", run.scratch)):
        check_writable_dir(path, role)
        if _is_within(path, run.source):
            raise MountError(
                f"{role} directory {path} is inside the source {run.source}: it would be "
                f"crawled as input; choose --{role} outside the source"
            )
    return report


def _is_within(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def run_job(job: Job, ref: JobRef, run: ResolvedRun, progress: Progress | None = None) -> RunReport:
    """Run ``job`` end to end; per-file failures are counted, never raised."""
    started = time.monotonic()
    mount = preflight(job, run)
    paths = _Paths(run, job)
    previous = _check_previous(paths, run.settings.fresh)
    s = run.settings
    with _cluster.open_cluster(
        _cluster.ClusterOptions(s.scheduler, s.workers, s.threads_per_worker)
    ) as client:
        _prepare(paths, previous)
        _cluster.check_shared_dir(client, paths.shards)
        plan, entries = _plan(job, run, paths)
        tally = Tally(skipped=entries - plan.files)
        interrupted: KeyboardInterrupt | None = None  # Ctrl-C, or SIGTERM (a subclass)
        try:
            _execute(client, job, ref, run, paths, plan, tally, progress or (lambda _e: None))
        except KeyboardInterrupt as exc:
            interrupted = exc
            log.warning("interrupted: publishing what is complete")
    within = run.settings.budget.allows(tally.failed, plan.files) and interrupted is None
    summary = _summary(job, run, mount, plan, tally, entries, time.monotonic() - started, within)
    _finish(job, run, paths, tally, summary, within)
    if interrupted is not None:
        raise interrupted
    return RunReport(summary, within)


def _check_previous(paths: _Paths, fresh: bool) -> list[Path]:
    previous = paths.previous_outputs()
    if previous and not fresh:
        raise OutputsNotEmptyError(
            f"outputs directory {paths.outputs} already holds results of this job "
            f"({previous[0].name}, {len(previous)} files): pass --fresh to replace them, "
            "or choose another --outputs"
        )
    return previous


def _prepare(paths: _Paths, previous: list[Path]) -> None:
    for p in previous:
        p.chmod(0o644)
        p.unlink()
    shutil.rmtree(paths.root, ignore_errors=True)
    for d in (paths.outputs, paths.shards, paths.results):
        d.mkdir(parents=True, exist_ok=True)


def _plan(job: Job, run: ResolvedRun, paths: _Paths) -> tuple[Plan, int]:
    stats = write_listing(run.source, Patterns(job.include, job.exclude), paths.listing)
    subset = test_subset(paths.listing, run.settings.test_size) if run.settings.test_mode else None
    bounds = ShardBounds(run.settings.shard_max_files, int(run.settings.shard_max_bytes))
    plan = write_plan(paths.listing, paths.plan, bounds, subset)
    if subset is not None:
        log.info(
            "test mode: %d of %d files, spread over the tree's directories",
            plan.files,
            stats.eligible,
        )
    log.info("%d files (%d bytes) in %d shard(s)", plan.files, plan.bytes, plan.shards)
    if plan.files == 0:
        log.warning("no files to process under %s (check the include patterns)", run.source)
    return plan, stats.entries


def _specs(job: Job, ref: JobRef, run: ResolvedRun, paths: _Paths) -> Iterator[ShardSpec]:
    params_json = run.params.model_dump_json()
    for index, entries in iter_shards(paths.plan):
        yield ShardSpec(
            index,
            ref,
            params_json,
            str(run.source),
            str(paths.shards),
            paths.tar_name(index),
            entries,
        )


def _execute(
    client: _cluster.Client,
    job: Job,
    ref: JobRef,
    run: ResolvedRun,
    paths: _Paths,
    plan: Plan,
    tally: Tally,
    progress: Progress,
) -> None:
    threads = run.settings.threads_per_worker
    window = 2 * max(1, _cluster.worker_count(client)) * threads
    outcomes = _cluster.map_unordered(
        client,
        run_shard,
        _specs(job, ref, run, paths),
        key=lambda spec: f"mountproc-{job.name}-{spec.index:06d}-{ref.digest[:8]}",
        window=window,
    )
    for spec, outcome in outcomes:
        # a tar is published together with its record, or not at all
        _shielded(partial(_collect, paths, spec, outcome, tally))
        progress(_progress_event(plan, tally))


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
    paths: _Paths, spec: ShardSpec, outcome: ShardResult | BaseException, tally: Tally
) -> None:
    if isinstance(outcome, JobSetupError):
        raise outcome  # every shard would fail the same way: stop with one line
    if isinstance(outcome, BaseException):
        reason = f"shard {spec.index} failed: {type(outcome).__name__}: {outcome}".strip()
        log.error("%s", reason)
        results = tuple(FileResult(e.path, Status.FAILED, reason[:500]) for e in spec.entries)
        _metadata.write_results(_metadata.results_path(paths.results, spec.index), results)
        tally.shards_failed += 1
        tally.add(results)
        return
    publish(Path(outcome.tar_path), paths.outputs / outcome.tar_name)
    _metadata.write_results(_metadata.results_path(paths.results, spec.index), outcome.results)
    record = _metadata.shard_record(outcome)
    _metadata.write_record(_metadata.record_path(paths.results, spec.index), record)
    tally.records.append(record)
    tally.shards_done += 1
    tally.add(outcome.results)


def _progress_event(plan: Plan, tally: Tally) -> dict[str, Any]:
    return {
        "shards_done": tally.shards_done + tally.shards_failed,
        "shards_total": plan.shards,
        "files_ok": tally.ok,
        "files_failed": tally.failed,
        "files_total": plan.files,
    }


def _summary(
    job: Job,
    run: ResolvedRun,
    mount: MountReport,
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
        "mount": mount.as_dict(),
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
    job: Job, run: ResolvedRun, paths: _Paths, tally: Tally, summary: dict[str, Any], within: bool
) -> None:
    """Publish the manifest, the summary and the Valohai metadata (dataset entries only when
    the run is within its failure budget and not in test mode)."""
    tar_names = {r.index: r.tar for r in tally.records}
    manifest = paths.root / paths.manifest
    _metadata.write_manifest(paths.plan, paths.results, tar_names, manifest)
    publish(manifest, paths.outputs / paths.manifest)
    summary_file = paths.root / paths.summary
    _metadata.write_json(summary_file, summary)
    publish(summary_file, paths.outputs / paths.summary)
    lines = _metadata.metadata_lines(
        sorted(tally.records, key=lambda r: r.index),
        [paths.manifest, paths.summary],
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
