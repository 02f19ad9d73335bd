"""``mountproc plan``'s report as aligned lines for the terminal."""

from __future__ import annotations

from mountproc._mounts.dirs import human_bytes
from mountproc._planning.estimate import PlanReport

ESTIMATE_RULE = "per-file median x files / threads"


ESTIMATE_CAVEAT = (
    "tar writing and a network mount add to it; threads beyond the cores help only a transform "
    "that waits or releases the GIL"
)


def render(report: PlanReport) -> list[str]:
    """The report as aligned lines for the terminal."""
    rows = [
        ("source", f"{report.source} ({report.mount})"),
        ("listed", f"{report.entries:,} entries in {_seconds(report.listing_s)}"),
        *([("skipped", _skipped_text(report))] if report.skipped else []),
        *_increment_rows(report),
        ("files", _files_text(report)),
        ("test mode", _test_text(report)),
        ("timed", _timed_text(report)),
        ("estimate", _estimate_text(report)),
    ]
    if report.timed_files and report.timed_failed == report.timed_files:
        rows.append(
            (
                "warning",
                f"every timed file failed ({report.timed_error}): the estimate means "
                "little; fix the job or check the source before a run",
            )
        )
    rows.append(("outputs", "nothing written"))
    return [f"{key:<12} {value}" for key, value in rows]


def _increment_rows(r: PlanReport) -> list[tuple[str, str]]:
    """What changed since the earlier run, and the tars a run would replace."""
    inc = r.increment
    if inc is None:
        return []
    found = f"{inc.added:,} added, {inc.changed:,} changed, {inc.deleted:,} deleted"
    if inc.retried:
        found += f", {inc.retried:,} failed there (retried)"
    rows = [
        ("since", f"{r.since}: {found}"),
        ("carried", f"{_count(inc.carried, 'file')} unchanged in tars kept as they are"),
        ("replaced", f"{_count(len(inc.excluded), 'tar')}" + _names(inc.excluded)),
    ]
    if inc.reprocessed:
        rows.append(("", f"their {_count(inc.reprocessed, 'unchanged file')} are processed again"))
    return rows


def _names(tars: tuple[str, ...], shown: int = 5) -> str:
    """A few tar names, and how many more."""
    if not tars:
        return ""
    more = f", ... {len(tars) - shown} more" if len(tars) > shown else ""
    return ": " + ", ".join(tars[:shown]) + more


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


def _timed_text(r: PlanReport) -> str:
    if r.per_file_s is None:
        return "no files to time"
    failed = f"{r.timed_failed} failed" + (f" (first: {r.timed_error})" if r.timed_error else "")
    return (
        f"{_count(r.timed_files, 'file')}: {_seconds(r.per_file_s)} per file (median), "
        f"setup {_seconds(r.setup_s)} per worker process; {failed}"
    )


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
