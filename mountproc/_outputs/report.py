"""What a finished run's outputs say, read with pandas: ``mountproc.manifest`` for a notebook,
and ``mountproc report``'s lines (failures by reason, files and bytes by top-level folder,
skipped and excluded entries by reason)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mountproc._errors import UsageError
from mountproc._mounts.dirs import human_bytes
from mountproc._records import NOT_PROCESSED
from mountproc._shard.failures import general

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_SUFFIX = "-manifest.parquet"
SHOWN = 10


def manifest_path(outputs_dir: str | Path, job: str | None = None) -> Path:
    """The manifest of ``job`` in ``outputs_dir`` (the only one there when ``job`` is None)."""
    directory = Path(outputs_dir)
    if job is not None:
        found = [directory / f"{job}{MANIFEST_SUFFIX}"]
        found = [p for p in found if p.is_file()]
    else:
        found = sorted(directory.glob(f"*{MANIFEST_SUFFIX}"))
    if not found:
        what = f"job {job!r}'s manifest" if job else "no mountproc manifest"
        raise UsageError(f"{directory}: {what} ({job or '<job>'}{MANIFEST_SUFFIX}) is not there")
    if len(found) > 1:
        jobs = ", ".join(p.name.removesuffix(MANIFEST_SUFFIX) for p in found)
        raise UsageError(f"{directory} holds the manifests of several jobs ({jobs}): name one")
    return found[0]


def manifest(outputs_dir: str | Path, job: str | None = None) -> pd.DataFrame:
    """The manifest of a run as a DataFrame: one row per listed entry (``path``, ``size``,
    ``mtime_ns``, ``shard``, ``tar``, ``status``, ``error``, ``traceback``, ``members``...)."""
    import pandas as pd  # only when asked for

    return pd.read_parquet(manifest_path(outputs_dir, job))


def report_lines(outputs_dir: str | Path, job: str | None = None) -> list[str]:
    """``mountproc report``: what the run did, where files failed and why."""
    path = manifest_path(outputs_dir, job)
    frame = manifest(outputs_dir, job)
    name = path.name.removesuffix(MANIFEST_SUFFIX)
    lines = [f"job         {name}", *_source(path.with_name(f"{name}-summary.json"))]
    unprocessed = frame["error"] == NOT_PROCESSED
    counts = frame[~unprocessed]["status"].value_counts()
    statuses = ("ok", "failed", "skipped", "excluded")
    shown = [f"{counts.get(s, 0):,} {s}" for s in statuses]
    if unprocessed.any():
        shown.append(f"{int(unprocessed.sum()):,} not processed (the run stopped first)")
    lines.append("files       " + ", ".join(shown))
    lines += _failures(frame)
    lines += _folders(frame)
    for status in ("skipped", "excluded"):
        lines += _reasons(frame, status)
    return lines


def _summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _source(summary: Path) -> list[str]:
    source = _summary(summary).get("source")
    return [f"source      {source}"] if source else []


def _failures(frame: pd.DataFrame) -> list[str]:
    failed = frame[(frame["status"] == "failed") & (frame["error"] != NOT_PROCESSED)]
    if failed.empty:
        return []
    keys = [general(e or "failed", p) for e, p in zip(failed["error"], failed["path"], strict=True)]
    groups = failed.assign(reason=keys).groupby("reason", sort=False)["path"]
    table = groups.agg(["count", "first"]).sort_values("count", ascending=False, kind="stable")
    lines = ["", "failures by reason (files, reason, e.g.):"]
    for reason, count, first in table.head(SHOWN).itertuples():
        lines.append(f"  {count:>8,}  {reason}  (e.g. {first})")
    if len(table) > SHOWN:
        lines.append(f"  ... {len(table) - SHOWN} more reasons")
    lines.append("  each failed file's traceback: manifest column 'traceback' (mountproc.manifest)")
    return lines


def _folders(frame: pd.DataFrame) -> list[str]:
    selected = frame[frame["status"] != "excluded"]
    if selected.empty:
        return []
    top = selected["path"].str.split("/", n=1).str[0].where(selected["path"].str.contains("/"), ".")
    table = selected.assign(folder=top, failed=selected["status"] == "failed").groupby("folder")
    summary = table.agg(files=("path", "size"), bytes=("size", "sum"), failed=("failed", "sum"))
    lines = ["", "by top-level folder (files, bytes, failed):"]
    for folder, files, size, failed in summary.sort_index().head(SHOWN * 5).itertuples():
        lines.append(f"  {files:>8,}  {human_bytes(int(size)):>10}  {failed:>6,}  {folder}")
    return lines


def _reasons(frame: pd.DataFrame, status: str) -> list[str]:
    rows = frame[frame["status"] == status]
    if rows.empty:
        return []
    counts = rows["error"].fillna("-").value_counts().head(SHOWN)
    return ["", f"{status} by reason:", *(f"  {n:>8,}  {why}" for why, n in counts.items())]


def failed_files(
    outputs_dir: str | Path, limit: int, job: str | None = None
) -> tuple[Path | None, list[Path]]:
    """The source and the first ``limit`` files that failed in a run's outputs."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = manifest_path(outputs_dir, job)
    name = path.name.removesuffix(MANIFEST_SUFFIX)
    summary = _summary(path.with_name(f"{name}-summary.json"))
    source = Path(summary["source"]) if summary.get("source") else None
    table = pq.read_table(path, columns=["path_raw", "status"])
    failed = table.filter(pc.equal(table.column("status"), "failed")).column("path_raw")
    return source, [Path(os.fsdecode(raw)) for raw in failed.to_pylist()[:limit]]
