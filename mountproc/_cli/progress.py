"""What ``mountproc run`` shows while it runs and when it ends (CLI only): a live status line in
a terminal; one JSON object per line every few seconds otherwise (Valohai charts those); and a
plain summary table at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

import click

JSON_EVERY_S = 5.0  # Valohai's execution log: a metrics line every few seconds
LIVE_EVERY_S = 0.2  # a terminal: redraw at most this often
SHOWN_FAILURES = 5


class Progress:
    """Turns the runner's progress events into figures: done, failed, rate and ETA."""

    def __init__(self, live: bool, err: TextIO | None = None) -> None:
        self.live = live
        self._err = err
        self._start: tuple[float, int] | None = None  # when, and files done then (reused)
        self._shown = 0.0
        self._width = 0

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = (now, event["files_done"])
        finished = event["shards_done"] >= event["shards_total"]
        every = LIVE_EVERY_S if self.live else JSON_EVERY_S
        if self._shown and now - self._shown < every and not finished:
            return
        self._shown = now
        figures = self.figures(event, now)
        if self.live:
            self._redraw(status_line(figures))
        else:
            click.echo(json.dumps(figures, sort_keys=True))

    def figures(self, event: dict[str, Any], now: float) -> dict[str, Any]:
        """The event with the rate (files of this run per second) and the ETA in seconds."""
        start, done_before = self._start or (now, 0)
        elapsed = now - start
        rate = (event["files_done"] - done_before) / elapsed if elapsed > 0 else 0.0
        left = event["files_total"] - event["files_done"]
        eta = round(left / rate, 1) if rate > 0 else None
        return {
            **event,
            "files_per_s": round(rate, 1),
            "eta_s": eta,
            "elapsed_s": round(elapsed, 1),
        }

    def close(self) -> None:
        """End the live line, so that what follows starts on a line of its own."""
        if self.live and self._width:
            click.echo(err=True, file=self._err)
            self._width = 0

    def _redraw(self, line: str) -> None:
        pad = max(0, self._width - len(line))
        click.echo("\r" + line + " " * pad, nl=False, err=True, file=self._err)
        self._width = len(line)


def status_line(f: dict[str, Any]) -> str:
    """One terminal line: files and shards done, failures, rate, ETA."""
    total = f["files_total"]
    pct = 100 * f["files_done"] / total if total else 100.0
    eta = _clock(f["eta_s"]) if f["eta_s"] is not None else "--:--"
    return (
        f"{f['files_done']:,}/{total:,} files ({pct:.0f}%) | "
        f"{f['shards_done']}/{f['shards_total']} shards | {f['files_failed']:,} failed | "
        f"{f['files_per_s']:,.1f} files/s | ETA {eta}"
    )


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def summary_table(summary: dict[str, Any], outputs: Path) -> list[str]:
    """The plain table printed at the end of a run."""
    s = summary
    if s["dataset"]:
        dataset = s["dataset"] + (f" (from {s['dataset_from']})" if s.get("dataset_from") else "")
    elif s["test_mode"]:
        dataset = "none (test mode)"
    elif not s["within_budget"]:
        dataset = "none (the run is not within its failure budget)"
    else:
        dataset = "none (no --dataset)"
    rows = [
        ("job", s["job"]),
        ("source", s["source"]),
        (
            "files",
            f"{s['files_ok']:,} ok, {s['files_failed']:,} failed, {s['files_skipped']:,} skipped "
            f"by the transform ({s['files_selected']:,} selected of {s['entries_listed']:,} "
            f"listed, {s['files_excluded']:,} excluded)",
        ),
        (
            "shards",
            f"{s['shards_published']:,} published, {s['shards_failed']:,} failed, "
            f"{s['shards_reused']:,} reused from an earlier run",
        ),
        ("time", f"{s['seconds']:,.1f} s, {s['files_per_s'] or 0:,.1f} files/s"),
        ("outputs", f"{outputs} ({_plural(s['shards_published'], 'tar')})"),
        ("dataset", dataset),
    ]
    if s.get("stopped_by"):
        rows.append(("stopped by", s["stopped_by"]))
    drift = s.get("source_changed") or {}
    if any(drift.values()):
        rows.append((
            "source",
            f"changed since the listing: {drift['added']:,} added, {drift['removed']:,} removed, "
            f"{drift['changed']:,} changed (not in these outputs: --fresh includes them)",
        ))  # fmt: skip
    rows += _increment_rows(s)
    rows += _failure_rows(s, outputs)
    return [f"{key:<12}{value}" for key, value in rows]


def _increment_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """What an increment compared with, found and carried over."""
    inc = summary.get("increment")
    if not inc:
        return []
    found = f"{inc['added']:,} added, {inc['changed']:,} changed, {inc['deleted']:,} deleted"
    if inc["retried"]:
        found += f", {inc['retried']:,} failed before, retried"
    replaced = len(inc["rebuilt"]) + len(inc["removed"])
    return [
        ("increment", f"{inc['number']} since {inc['since']}: {found}"),
        ("", f"{inc['carried']:,} files carried over in the earlier tars; {replaced} replaced"),
    ]


def _failure_rows(summary: dict[str, Any], outputs: Path) -> list[tuple[str, str]]:
    """The commonest failures, and where each failed file's reason and traceback are."""
    groups = summary.get("failures") or []
    rows = [
        ("failures" if i == 0 else "", f"{g['files']:,} x {g['error']} (e.g. {g['example']})")
        for i, g in enumerate(groups[:SHOWN_FAILURES])
    ]
    if len(groups) > SHOWN_FAILURES:
        rows.append(("", f"... {len(groups) - SHOWN_FAILURES} more kinds"))
    if groups:
        manifest = outputs / f"{summary['job']}-manifest.parquet"
        rows.append(("details", f"mountproc report {outputs}  (or {manifest}: error, traceback)"))
    return rows


def final_metrics(summary: dict[str, Any]) -> str:
    """The last metrics line (JSON, for Valohai's charts)."""
    keys = ("files_ok", "files_failed", "files_skipped", "seconds", "files_per_s")
    return json.dumps({k: summary[k] for k in keys}, sort_keys=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
