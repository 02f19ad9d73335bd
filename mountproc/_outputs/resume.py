"""Resume: what a rerun of the same command reuses
from an earlier run that did not finish.

A run keeps ``run.json`` in its scratch area: what decides its shards and their bytes (the job
file's digest, parameters, source, shard bounds, test mode). A shard is finished when its
completion record exists and its tar in outputs has the recorded sha256; the record is written
only after the tar is in place, so a crash between the two leaves a tar without a record,
which a rerun removes and builds again (to the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mountproc import __version__
from mountproc._errors import OutputsNotEmptyError
from mountproc._jobfile import code_digest
from mountproc._jsonfile import write_json
from mountproc._listing.sharding import Plan
from mountproc._mounts.table import show
from mountproc._outputs.layout import STATE_NAME, RunPaths, record_path
from mountproc._outputs.metadata import ShardRecord, read_records
from mountproc._records import JobRef
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Reuse:
    """What a rerun found: the verified finished shards, and what it had to discard."""

    finished: dict[int, ShardRecord]
    discarded: int


def read_state(root: Path) -> dict[str, Any] | None:
    """The saved state of the run in ``root``, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads((root / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Save the run's state (atomically)."""
    write_json(root / STATE_NAME, state)


def identity(run: ResolvedRun, code_digest: str) -> dict[str, Any]:
    """What decides a run's shards and the bytes of its tars: two runs with the same identity
    produce the same outputs, so one may finish the other's work. The job's code counts, not
    its comments or formatting; the source by its real path."""
    s = run.settings
    return {
        "job_code": code_digest,
        "params": run.params.model_dump(mode="json"),
        "source": os.path.realpath(run.source),
        "shard_max_files": s.shard_max_files,
        "shard_max_bytes": int(s.shard_max_bytes),
        "test_size": s.test_size if s.test_mode else None,  # None: not in test mode
        "mountproc": __version__,
    }


def changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs, as ``name: old -> new`` (parameters by name, settings by flag)."""
    out = []
    for key, now in current.items():
        before = saved.get(key)
        if before == now:
            continue
        if key == "params" and isinstance(before, dict):
            names = sorted(set(before) | set(now))
            out += [
                f"{n}: {before.get(n)!r} -> {now.get(n)!r}"
                for n in names
                if before.get(n) != now.get(n)
            ]
        elif key == "job_code":
            out.append("the job file's code (comments and formatting aside)")
        elif key == "mountproc":
            out.append(f"mountproc: {before} -> {now}")
        else:
            out.append(f"--{key.replace('_', '-')}: {before} -> {now}")
    return out


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def reuse(results: Path, shards: Path, outputs: Path, published: list[Path]) -> Reuse:
    """Verify the finished shards of an earlier run; remove what cannot be trusted or will be
    written again: results without a record, tars without a verified record, the manifest,
    summary and metadata, and worker notes of shards in flight when the run stopped."""
    finished: dict[int, ShardRecord] = {}
    for record in read_records(results):
        tar = outputs / record.tar
        if tar.is_file() and sha256_file(tar) == record.sha256:
            finished[record.index] = record
            continue
        log.warning(
            "shard %d: its tar %s is missing or altered; building it again", record.index, tar.name
        )
        record_path(results, record.index).unlink()
    for result in results.glob("shard-*.parquet"):
        if int(result.stem.removeprefix("shard-")) not in finished:
            result.unlink()
    keep = {r.tar for r in finished.values()}
    # an unrecorded tar, or the manifest/summary/metadata (written again at the end)
    stale = [path for path in published if path.name not in keep]
    remove_published(stale)
    for note in shards.glob("*.inflight"):  # the run stopped, not a worker: no strike
        note.unlink()
    return Reuse(finished, sum(path.name.endswith(".tar") for path in stale))


def remove_published(published: list[Path]) -> None:
    """Remove files an earlier run published (read-only: made writable first)."""
    for path in published:
        path.chmod(0o644)
        path.unlink()


@dataclass(frozen=True)
class Begun:
    """How a run starts: afresh, or resuming an earlier run of the same command."""

    state: dict[str, Any]
    finished: dict[int, ShardRecord] = field(default_factory=dict)
    plan: tuple[Plan, int] | None = None  # an earlier run's finished plan, and its entries
    replaced: list[Path] = field(default_factory=list)  # to remove once the run is sure to start


def begin(
    paths: RunPaths, run: ResolvedRun, ref: JobRef, lineage: dict[str, Any] | None = None
) -> Begun:
    """Resume when scratch holds an earlier run of the same command (an increment: from the
    same earlier run); else start afresh, which needs --fresh when outputs already hold results
    of this job."""
    s = run.settings
    current = {**identity(run, code_digest(ref)), **(lineage or {})}
    previous = paths.previous_outputs()
    saved = read_state(paths.root) or {}
    if not s.fresh and saved.get("identity") == current:
        return _resume(paths, saved, previous)
    if previous and not s.fresh:
        raise OutputsNotEmptyError(
            f"outputs directory {show(paths.outputs)} already holds results of this job "
            f"({previous[0].name}, {len(previous)} files) from {_other_run(saved, current)}: "
            "pass --fresh to replace them, or choose another --outputs"
        )
    shutil.rmtree(paths.root, ignore_errors=True)
    for d in (paths.shards, paths.results):
        d.mkdir(parents=True, exist_ok=True)
    state = {"identity": current}
    write_state(paths.root, state)
    return Begun(state, replaced=previous)


def _other_run(saved: dict[str, Any], current: dict[str, Any]) -> str:
    if "identity" not in saved:
        return "a run this scratch directory has no record of"
    return f"a run with other settings ({'; '.join(changes(saved['identity'], current))})"


def _resume(paths: RunPaths, saved: dict[str, Any], previous: list[Path]) -> Begun:
    reused = reuse(paths.results, paths.shards, paths.outputs, previous)
    listed = saved.get("listed")
    plan = None
    if listed is not None:
        totals = Plan(paths.plan, listed["shards"], listed["files"], listed["bytes"])
        plan = (totals, int(listed["entries"]))
    log.info(
        "resuming an earlier run of this command: %d shard(s) already published and verified%s",
        len(reused.finished),
        f", {reused.discarded} discarded" if reused.discarded else "",
    )
    return Begun(saved, reused.finished, plan)
