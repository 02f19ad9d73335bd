"""What a run publishes: each finished shard's tar with its per-file results and completion
record as it arrives, and at the end the manifest, the summary, the wids index and
``valohai.metadata.jsonl``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mountproc._errors import MountprocError
from mountproc._jsonfile import write_json
from mountproc._outputs import metadata, metadata_file
from mountproc._outputs.failures import failure_groups
from mountproc._outputs.layout import RunPaths, record_path, results_path
from mountproc._outputs.manifest import Version, write_manifest
from mountproc._outputs.publish import publish
from mountproc._outputs.summary import Tally
from mountproc._records import NOT_PROCESSED, FileResult, ShardResult, ShardSpec, Status
from mountproc._settings import RunSettings

log = logging.getLogger(__name__)

TEST_MODE_TAG = "mountproc-test-mode"


def collect(
    paths: RunPaths, spec: ShardSpec, outcome: ShardResult | BaseException, tally: Tally
) -> None:
    """Publish one shard's tar with its results and record (together, or not at all), or
    record every file of a shard that failed as a whole."""
    if isinstance(outcome, MountprocError):
        raise outcome  # a broken setup, a worker's mount, a full disk: every shard would fail
    if isinstance(outcome, ShardResult) and outcome.stopped:
        _gave_up(paths, spec, outcome, tally)  # the runner stops the run
        return
    if isinstance(outcome, BaseException):
        reason = f"shard {spec.index} failed: {type(outcome).__name__}: {outcome}".strip()
        log.error("%s", reason)
        results = tuple(FileResult(e.path, Status.FAILED, reason[:500]) for e in spec.entries)
        metadata.write_results(results_path(paths.results, spec.index), results)
        tally.shards_failed += 1
        tally.add(results)
        return
    publish(Path(outcome.tar_path), paths.outputs / spec.tar_name)
    metadata.write_results(results_path(paths.results, spec.index), outcome.results)
    record = metadata.shard_record(outcome)
    metadata.write_record(record_path(paths.results, spec.index), record)
    tally.records.append(record)
    tally.shards_done += 1
    tally.shards_copied += 0 if outcome.scratch_shared else 1
    tally.add(outcome.results)


def _gave_up(paths: RunPaths, spec: ShardSpec, outcome: ShardResult, tally: Tally) -> None:
    """A worker gave up on its shard: keep what it found (the failures and their tracebacks),
    the rest not processed, no tar."""
    done = outcome.results
    rest = tuple(
        FileResult(e.path, Status.FAILED, NOT_PROCESSED) for e in spec.entries[len(done) :]
    )
    metadata.write_results(results_path(paths.results, spec.index), done + rest)
    tally.shards_failed += 1
    tally.add(done)


def dataset_target(
    settings: RunSettings, base: str | None = None, exclude: Sequence[str] = ()
) -> metadata.DatasetTarget | None:
    """The dataset version the tars join (made from ``base`` without ``exclude``): none in
    test mode or without ``--dataset``."""
    s = settings
    if s.test_mode or not s.dataset:
        return None
    return metadata.DatasetTarget(
        s.dataset, s.dataset_start_fresh, base, s.dataset_aliases, tuple(exclude)
    )


def finish(
    paths: RunPaths,
    records: Sequence[metadata.ShardRecord],
    summary: dict[str, Any],
    target: metadata.DatasetTarget | None,
    version: Callable[[Sequence[metadata.ShardRecord]], Version],
    carried: Path | None,
    settings: RunSettings,
    datums: Mapping[str, str] | None = None,
) -> None:
    """Publish the manifest (of the whole ``version``: an increment's carries its base's
    rows), the summary, the wids index of the version's tars and the Valohai metadata (dataset
    entries only for a ``target``; the settings' tags on every file, its alias on the
    manifest) of this run's files."""
    records = sorted(records, key=lambda r: r.index)
    manifest = paths.root / paths.manifest
    whole = version(records)
    names = {r.index: r.tar for r in records}
    write_manifest(paths.plan, paths.results, names, manifest, whole, carried, datums)
    # read here, before it is published: Valohai may take a published file away at once
    summary["failures"] = failure_groups(manifest)
    publish(manifest, paths.outputs / paths.manifest)
    for name, data in (
        (paths.summary, summary),
        (paths.index, metadata.wids_index(paths.job, whole.tars)),
    ):
        write_json(paths.root / name, data)
        publish(paths.root / name, paths.outputs / name)
    lines = metadata.metadata_lines(
        records,
        [paths.manifest, paths.summary, paths.index],
        target,
        [*settings.tags, *([TEST_MODE_TAG] if paths.test_mode else [])],
        {"mountproc.job": paths.job, "source": summary["source"]},
        {paths.manifest: settings.alias} if settings.alias and not paths.test_mode else {},
    )
    metadata_file.update(paths.outputs, paths.root, paths.owns, lines)
