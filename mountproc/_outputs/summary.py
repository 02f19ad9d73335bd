"""A run's counts as it goes (``Tally``), the progress events made of them, and the summary
that ``<job>-summary.json`` and the final table show."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mountproc._listing.sharding import Plan
from mountproc._outputs.metadata import ShardRecord
from mountproc._records import FileResult, Status
from mountproc._shard.failures import general


@dataclass
class Tally:
    """Running counts of a run."""

    shards_total: int = 0
    files_total: int = 0
    shards_done: int = 0
    shards_failed: int = 0
    shards_copied: int = 0  # built on a worker's own disk (no shared scratch), copied here
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # declined by the transform
    excluded: int = 0  # never selected by the listing (patterns, symlinks...): never shards
    records: list[ShardRecord] = field(default_factory=list)
    first_failures: set[str] = field(default_factory=set)  # reasons, while none succeeded

    def reuse(self, finished: Iterable[ShardRecord]) -> None:
        """Count the shards an earlier run of the same command finished."""
        for record in finished:
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
                if not self.ok + self.skipped:
                    self.first_failures.add(general(r.error or "failed", r.path))
            else:
                self.skipped += 1

    def broken(self, first: int) -> str | None:
        """The one reason the first ``first`` (or more) files all failed for, if they did."""
        if self.ok + self.skipped or self.failed < first or len(self.first_failures) != 1:
            return None
        return next(iter(self.first_failures))

    def progress(self, in_flight: dict[str, int] | None = None) -> dict[str, Any]:
        """The progress event of the counts so far, with the files done by the shards still in
        flight (by status) when given."""
        more = in_flight or {}
        ok, failed, skipped = (more.get(k, 0) for k in ("ok", "failed", "skipped"))
        return {
            "shards_done": self.shards_done + self.shards_failed,
            "shards_total": self.shards_total,
            "files_done": self.ok + self.failed + self.skipped + ok + failed + skipped,
            "files_ok": self.ok + ok,
            "files_failed": self.failed + failed,
            "files_skipped": self.skipped + skipped,
            "files_total": self.files_total,
        }

    def counts(self, plan: Plan, entries: int) -> dict[str, Any]:
        """The summary's counts of files and shards."""
        return {
            "entries_listed": entries,
            "files_selected": plan.files,
            "bytes_selected": plan.bytes,
            "files_ok": self.ok,
            "files_failed": self.failed,
            "files_skipped": self.skipped,
            "files_excluded": self.excluded,
            "files_not_processed": plan.files - self.ok - self.failed - self.skipped,
            "shards": plan.shards,
            "shards_published": self.shards_done,
            "shards_failed": self.shards_failed,
            "shards_copied": self.shards_copied,
        }
