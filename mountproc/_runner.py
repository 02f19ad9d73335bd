"""Orchestration only: a ``Run`` takes a job through preflight, listing, shards on the cluster,
publishing and the summary; each stage's work is done by its own package."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from typing import Any

from mountproc import __version__
from mountproc._cluster.client import Client
from mountproc._cluster.connect import connect
from mountproc._cluster.feed import Feed, reporting
from mountproc._cluster.jobqueue import cluster_class
from mountproc._cluster.placement import crawl_on_cluster
from mountproc._cluster.stream import TaskStream, WorkerWatch, executor, thread_count
from mountproc._cluster.transfer import brought
from mountproc._errors import (
    FailureBudgetExceeded,
    MountprocError,
    RunInterrupted,
    StoppedEarly,
    Terminated,
)
from mountproc._job import Job
from mountproc._listing.drift import drift
from mountproc._listing.sharding import Plan, iter_shards
from mountproc._listing.stage import entries_listed, list_and_shard, list_source, lister
from mountproc._mounts.preflight import Preflight, preflight
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._outputs import metadata_file
from mountproc._outputs.increment import Increment
from mountproc._outputs.layout import RunPaths
from mountproc._outputs.lineage import Lineage, carried_path, lineage, new_version, plan_increment
from mountproc._outputs.lock import lock_path, run_lock
from mountproc._outputs.publish import disk_full_is_an_error, shielded
from mountproc._outputs.results import collect, dataset_target, finish
from mountproc._outputs.resume import (
    Begun,
    begin,
    read_state,
    remove_published,
    write_state,
)
from mountproc._outputs.summary import Tally
from mountproc._records import (
    JobRef,
    Limits,
    RunReport,
    ShardResult,
    ShardSpec,
    StopRules,
    WorkerCheck,
)
from mountproc._resolve import ResolvedRun
from mountproc._shard.worker import run_shard
from mountproc._valohai.inputs import remote_files

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
SAME_FIRST = 50
"""The run stops when its first this many files all failed the same way..."""
SAME_FIRST_IN_A_SHARD = 25
"""...and a worker gives up on its shard when the shard's first files did (two workers stop
together at 50)."""


class Run:
    """One run of a job with resolved settings; ``execute()`` runs it end to end."""

    def __init__(
        self,
        job: Job,
        ref: JobRef,
        resolved: ResolvedRun,
        client: Client | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.job, self.ref, self.resolved = job, ref, resolved
        self.settings = resolved.settings
        self.paths = RunPaths.of(
            resolved.outputs, resolved.scratch, job.name, self.settings.test_mode
        )
        self.given_client = client
        self.line = Lineage()
        self.found: Increment | None = None  # what an increment found changed
        self.progress = progress or (lambda event: None)
        self.tally = Tally()
        self._feed: Feed | None = None
        self._emitting = threading.Lock()

    def execute(self) -> RunReport:
        """Run the job; per-file failures are counted, never raised. A run stopped by Ctrl-C,
        SIGTERM or a failing environment still publishes what is complete, then raises."""
        started, started_at = time.monotonic(), _utc_now()
        if self.given_client is None and self.settings.cluster:
            cluster_class(self.settings.cluster)  # dask-jobqueue is there, before any work
        self.line = lineage(self.resolved, self.job.name)
        self.paths = replace(self.paths, increment=self.line.number)
        checked = preflight(self.resolved, self.job.readonly)
        mode = "test-mode run" if self.settings.test_mode else "run"
        what = f"{mode} of job {self.job.name} into {self.resolved.outputs}"
        r = self.resolved
        path = lock_path(r.outputs, r.scratch, self.job.name, self.settings.test_mode)
        with run_lock(path, what):
            return self._locked(checked, started, started_at)

    def _locked(self, checked: Preflight, started: float, started_at: str) -> RunReport:
        """The run, once it holds the lock of its job and outputs."""
        begun = begin(self.paths, self.resolved, self.ref, self.line.identity())
        stop: BaseException | None = None
        with ExitStack() as stack:
            plan, entries, client, check = self._prepare(stack, begun, checked)
            try:
                self._execute(client, plan, self._specs(plan, check, set(begun.finished)))
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (a subclass)
                stop = exc
                log.warning("interrupted: publishing what is complete")
            except MountprocError as exc:  # every further shard would fail the same way
                stop = exc
                log.error("stopping the run: %s", exc)
        within = self.settings.budget.allows(self.tally.failed, plan.files) and stop is None
        summary = self._summary(checked, plan, entries, time.monotonic() - started, within)
        summary["source_changed"] = self._drift(checked) if begun.plan and stop is None else None
        summary["stopped_by"] = _stopped_by(stop)
        summary["shards_reused"] = len(begun.finished)
        summary.update(self._attempts(started_at, summary["seconds"]))
        self._finish_safely(summary, within, stop)
        report = RunReport(summary, within, self.paths.outputs)
        if isinstance(stop, KeyboardInterrupt):
            raise RunInterrupted(summary["stopped_by"], report) from None
        if isinstance(stop, MountprocError):
            stop.report = report
            raise stop
        return report

    def _prepare(
        self, stack: ExitStack, begun: Begun, checked: Preflight
    ) -> tuple[Plan, int, Client, WorkerCheck]:
        """The shards (listed now, or an earlier run's), and the checked cluster."""
        client = check = None
        if begun.plan is None and crawl_on_cluster(self.resolved):  # workers list the tree too
            client, check = self._connect(stack, checked)
        if begun.plan is not None:
            plan, entries = begun.plan
            found = begun.state.get("increment")
            self.found = Increment.from_dict(found) if found is not None else None
        else:
            plan, entries = self._list(checked, client, begun.state)
        carried = self.found.carried if self.found is not None else 0
        self.tally = Tally(plan.shards, plan.files, excluded=entries - plan.files - carried)
        self.tally.reuse(begun.finished.values())
        if client is None or check is None:
            left = plan.shards - len(begun.finished)  # no more workers than shards to run
            client, check = self._connect(stack, checked, left)
        remove_published(begun.replaced)
        if begun.replaced:  # their lines go with them; every other line stays
            metadata_file.update(self.paths.outputs, self.paths.root, self.paths.owns, [])
        self.paths.outputs.mkdir(parents=True, exist_ok=True)
        return plan, entries, client, check

    def _connect(
        self, stack: ExitStack, checked: Preflight, shards: int | None = None
    ) -> tuple[Client, WorkerCheck]:
        r, given = self.resolved, self.given_client
        return connect(stack, r, self.paths.token, checked.mount, given, shards)

    def _list(
        self, checked: Preflight, client: Client | None, state: dict[str, Any]
    ) -> tuple[Plan, int]:
        cluster = executor(client) if client is not None else None
        where = partial(lister, self.resolved, checked.mount, cluster)
        if self.line.previous is None:
            plan, entries = list_and_shard(
                self.job, self.resolved, self.paths.listing, self.paths.plan, where
            )
        else:
            listed = partial(entries_listed, self.job, self.resolved, where)
            plan, entries, self.found = plan_increment(self.line, self.resolved, self.paths, listed)
            state = {**state, "increment": self.found.as_dict()}
        totals = {"shards": plan.shards, "files": plan.files, "bytes": plan.bytes}
        write_state(self.paths.root, {**state, "listed": {**totals, "entries": entries}})
        return plan, entries

    def _specs(self, plan: Plan, check: WorkerCheck, done: set[int]) -> Iterator[ShardSpec]:
        params_json = self.resolved.params.model_dump_json()
        limits = Limits(self.settings.file_timeout, self.settings.mount_timeout)
        source, work_dir = str(self.resolved.source), str(self.paths.shards)
        rules = self._stop_rules(plan)
        remote = partial(remote_files, self.resolved.on_demand)
        for index, entries in iter_shards(plan.path):
            if index in done:
                continue
            name = self.paths.tar_name(index)
            yield ShardSpec(
                index, self.ref, params_json, source, work_dir, name, entries, check, limits, rules,
                remote(entries),
            )  # fmt: skip

    def _stop_rules(self, plan: Plan) -> StopRules:
        """When a worker gives up on its shard (none with --keep-going)."""
        if self.settings.keep_going:
            return StopRules()
        return StopRules(self.settings.budget.most(plan.files), SAME_FIRST_IN_A_SHARD)

    def _stop_if_broken(self, plan: Plan, outcome: ShardResult | BaseException) -> None:
        """Stop the run once failures pass the budget, or when its first files all failed the
        same way (a broken transform would fail them all), or a worker gave up on its shard."""
        t, s = self.tally, self.settings
        if s.keep_going:
            return
        most = s.budget.most(plan.files)
        if t.failed > most:
            raise FailureBudgetExceeded(
                f"{t.failed} files failed, more than --max-failures={s.max_failures} allows "
                f"({most} of {plan.files}): stopped early"
            )
        why = None
        reason = t.broken(SAME_FIRST)
        if reason is not None:
            why = f"the first {t.failed} files all failed the same way: {reason}"
        elif isinstance(outcome, ShardResult) and outcome.stopped:
            why = f"shard {outcome.index} gave up: {outcome.stopped}"
        if why is not None:
            raise StoppedEarly(
                f"stopped early: {why}; try the transform on those files (mountproc try "
                f"{self.ref.filename} --failed-in {self.paths.outputs}), or pass --keep-going"
            )

    def _drift(self, checked: Preflight) -> dict[str, int] | None:
        """On a resumed run: what changed in the source since the listing it resumed (a fresh
        listing compared with it); a warning says what to do."""
        if self.settings.test_mode:
            return None
        fresh = self.paths.root / "relisting.parquet"
        where = partial(lister, self.resolved, checked.mount, None)
        try:
            list_source(self.job, self.resolved, fresh, where)
            changes = drift(self.paths.listing, fresh)
        except (MountprocError, OSError) as exc:  # the outputs are complete: say so, go on
            log.warning("could not list the source again to see what changed: %s", exc)
            return None
        finally:
            fresh.unlink(missing_ok=True)
        if any(changes.values()):
            log.warning(
                "the source changed since this run's listing: %(added)d file(s) added, "
                "%(removed)d removed, %(changed)d changed; they are not in these outputs "
                "(run again with --fresh to include them)",
                changes,
            )
        return changes

    def _execute(self, client: Client, plan: Plan, specs: Iterator[ShardSpec]) -> None:
        s = self.settings
        topic = f"mountproc-progress-{uuid.uuid4().hex}"
        self._feed = Feed(client, topic, self._emit)
        stream = TaskStream(
            client,
            reporting(run_shard, topic),
            specs,
            key=lambda spec: (
                f"mountproc-{spec.tar_name.removesuffix('.tar')}-{spec.job.digest[:8]}"
            ),
            window=lambda: 2 * max(1, thread_count(client)),  # follows workers that join
            resources=s.resource_needs,
        )
        self._emit()  # the starting point: what earlier runs already did
        try:
            with (
                SourceWatch(
                    self.resolved.watched, s.mount_timeout, "the run", on_lost=stream.cancel
                ) as watch,
                WorkerWatch(client, s.worker_wait, stream.cancel) as workers,
            ):
                for spec, outcome, worker in stream:
                    watch.check()
                    workers.check()
                    self._collect(client, spec, outcome, worker)
                    self._emit()
                    self._stop_if_broken(plan, outcome)
        finally:  # on a stop, cancel the shards in flight while the cluster is still up
            stream.cancel()
            self._feed.close()
            self._feed = None

    def _collect(
        self, client: Client, spec: ShardSpec, outcome: ShardResult | BaseException, worker: str
    ) -> None:
        """Bring the shard's tar here if need be, then publish it with its record."""
        # a copy may take long: Ctrl-C interrupts it (the shard is redone on a rerun)
        got = disk_full_is_an_error(partial(brought, client, self.paths.shards, outcome, worker))
        if self._feed is not None:
            self._feed.finished(spec.index)  # its results replace its reports
        # a tar is published together with its record, or not at all
        publish = partial(collect, self.paths, spec, got, self.tally)
        shielded(partial(disk_full_is_an_error, publish))

    def _emit(self) -> None:
        """A progress event: finished shards' counts and the files done in those in flight
        (called from the workers' reports, on the client's event loop, too)."""
        with self._emitting:
            flight = self._feed.in_flight() if self._feed is not None else None
            self.progress(self.tally.progress(flight))

    def _attempts(self, started_at: str, seconds: float) -> dict[str, Any]:
        """This attempt's times, and the attempts and seconds of the run so far (a resumed run
        counts its earlier attempts); saved for the next attempt."""
        state = read_state(self.paths.root) or {}
        attempts = int(state.get("attempts", 0)) + 1
        total = round(float(state.get("seconds_all_attempts", 0.0)) + seconds, 3)
        write_state(self.paths.root, {**state, "attempts": attempts, "seconds_all_attempts": total})
        return {
            "started": started_at,
            "ended": _utc_now(),
            "attempts": attempts,
            "seconds_all_attempts": total,
        }

    def _summary(
        self, checked: Preflight, plan: Plan, entries: int, seconds: float, within: bool
    ) -> dict[str, Any]:
        s = self.settings
        return {
            "job": self.job.name,
            "job_digest": self.ref.digest,
            "mountproc": __version__,
            "source": str(self.resolved.source),
            **checked.as_dict(),
            "test_mode": s.test_mode,
            **self.tally.counts(plan, entries),
            "max_failures": str(s.budget),
            "within_budget": within,
            "dataset": s.dataset if within and dataset_target(s) else None,
            "dataset_from": self.line.base_dataset(self.resolved) if within else None,
            "increment": self.line.summary(self.found),
            "params": self.resolved.params.model_dump(mode="json"),
            "seconds": round(seconds, 3),
            "files_per_s": round(plan.files / seconds, 1) if seconds > 0 else None,
        }

    def _finish_safely(
        self, summary: dict[str, Any], within: bool, stop: BaseException | None
    ) -> None:
        """Publish the manifest, summary and metadata; after a stop, a failure to do so (a full
        disk) must not hide the reason the run stopped."""
        target = self.line.target(self.resolved, self.found) if within else None
        version = partial(new_version, self.line, self.found, target=target)
        carried = carried_path(self.paths) if self.line.previous is not None else None
        records, settings = self.tally.records, self.settings
        datums = self.resolved.input.datums() if self.resolved.input is not None else None
        publish = partial(
            finish, self.paths, records, summary, target, version, carried, settings, datums
        )
        try:
            disk_full_is_an_error(publish)
        except MountprocError as exc:
            if stop is None:
                raise
            log.error("could not publish the manifest and summary: %s", exc)


def _stopped_by(stop: BaseException | None) -> str | None:
    if stop is None:
        return None
    if isinstance(stop, KeyboardInterrupt):
        return f"interrupted ({'SIGTERM' if isinstance(stop, Terminated) else 'SIGINT'})"
    return f"{type(stop).__name__}: {stop}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
