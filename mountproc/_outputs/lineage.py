"""Where a run's version comes from: a full run starts one, an increment (``--since``,
``--retry-failed``) builds on an earlier run's: its plan holds only what changed, its tars get
names of their own, its manifest describes the whole new version and its dataset version is
made ``from`` the base one, excluding the base tars it replaces."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mountproc._errors import UsageError
from mountproc._listing.sharding import Plan, ShardBounds, write_plan
from mountproc._outputs import increment
from mountproc._outputs.increment import Increment, Previous, Selection
from mountproc._outputs.layout import RunPaths
from mountproc._outputs.manifest import Version
from mountproc._outputs.metadata import DatasetTarget, ShardRecord
from mountproc._outputs.results import dataset_target
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lineage:
    """A run's place in its job's versions: a full run (no ``previous``), or an increment."""

    previous: Previous | None = None
    retry_failed: bool = False

    @property
    def number(self) -> int:
        """Which increment this run makes (1: a full run)."""
        return 1 if self.previous is None else self.previous.version.increment + 1

    def identity(self) -> dict[str, object]:
        """What an increment adds to a run's resume identity."""
        if self.previous is None:
            return {}
        return {"since": self.previous.digest, "retry_failed": self.retry_failed}

    def base_dataset(self, run: ResolvedRun) -> str | None:
        """The dataset version this run's builds on: ``--dataset-from``, else the one the earlier
        run registered its tars in; never guessed."""
        s = run.settings
        if self.previous is None or not s.dataset:
            return s.dataset_from
        base = s.dataset_from or self.previous.version.dataset
        if base is None:
            raise UsageError(
                f"--dataset {s.dataset}: the earlier run ({self.previous.manifest}) registered no "
                "dataset version: pass --dataset-from dataset://NAME/VERSION, the version holding "
                "its tars"
            )
        if base == s.dataset:
            raise UsageError(f"--dataset {s.dataset} is the base version itself: name a new one")
        return base

    def target(self, run: ResolvedRun, found: Increment | None) -> DatasetTarget | None:
        """The dataset version the run's tars join; an increment's is made from its base
        version, leaving out the base tars it replaced."""
        excluded = found.excluded if found is not None else ()
        return dataset_target(run.settings, self.base_dataset(run), excluded)

    def summary(self, found: Increment | None) -> dict[str, Any] | None:
        """What an increment found, and the earlier run it compared with (None: a full run)."""
        if self.previous is None or found is None:
            return None
        return {"since": str(self.previous.manifest), "number": self.number, **found.as_dict()}


def lineage(run: ResolvedRun, job: str) -> Lineage:
    """The run's lineage, its earlier run read and checked before anything starts."""
    s = run.settings
    named = s.since or s.retry_failed
    if named is None:
        return Lineage()
    if s.test_mode:  # a smoke test of the transform, not a version: the same step does both
        log.warning("test mode: --since/--retry-failed ignored (a test-mode run makes no version)")
        return Lineage()
    previous = increment.previous_run(named, job, optional=run.on_valohai)
    if previous is None:
        if s.retry_failed and not s.since:
            raise UsageError(f"--retry-failed {named}: no earlier run there")
        return Lineage()
    if previous.manifest.resolve().parent == run.outputs.resolve():
        raise UsageError(
            f"--since {named}: that is this run's own outputs directory; an increment is "
            "published beside its earlier run, not over it: choose another --outputs"
        )
    found = Lineage(previous, s.retry_failed is not None)
    found.base_dataset(run)  # a missing base stops the run now, not after the work
    return found


Listed = Callable[[Path], int]
"""Lists the source into a path; returns the entries listed."""


def plan_increment(
    line: Lineage, run: ResolvedRun, paths: RunPaths, list_source: Listed
) -> tuple[Plan, int, Increment]:
    """List (``--retry-failed`` alone: take the base version's listing), compare with the base
    version and shard only what must be processed."""
    previous = line.previous
    assert previous is not None
    s = run.settings
    if s.since is None:
        entries = increment.listing_of(previous, paths.listing)
    else:
        entries = list_source(paths.listing)
    how = Selection(run.source, s.compare, line.retry_failed)
    chosen = paths.root / "selection.parquet"
    found = increment.select(paths.listing, previous, how, chosen, carried_path(paths))
    bounds = ShardBounds(s.shard_max_files, int(s.shard_max_bytes))
    plan = write_plan(chosen, paths.plan, bounds)
    log.info(
        "since %s: %d added, %d changed, %d deleted; %d base tar(s) replaced; %d file(s) to "
        "process in %d shard(s), %d carried over",
        previous.manifest, found.added, found.changed, found.deleted, len(found.excluded),
        plan.files, plan.shards, found.carried,
    )  # fmt: skip
    return plan, entries, found


def carried_path(paths: RunPaths) -> Path:
    """Where an increment keeps the base rows it carries over."""
    return paths.root / "carried.parquet"


def new_version(
    line: Lineage,
    found: Increment | None,
    records: Sequence[ShardRecord],
    target: DatasetTarget | None,
) -> Version:
    """The version a run's manifest describes: its tars, those kept from its base first."""
    dataset = target.uri if target is not None else None
    if line.previous is None or found is None:
        return Version(1, dataset, tuple(records))
    dropped = set(found.excluded)
    kept = tuple(t for t in line.previous.version.tars if t.tar not in dropped)
    return Version(line.number, dataset, (*kept, *records), tuple(t.tar for t in kept))
