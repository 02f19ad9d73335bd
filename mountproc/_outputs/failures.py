"""Failures grouped for a person: by exception type and message (the file's own name taken
out), commonest first, each with its count and an example file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._records import NOT_PROCESSED, Status
from mountproc._shard.failures import general

SHOWN_GROUPS = 10


def failure_groups(manifest: Path, limit: int = SHOWN_GROUPS) -> list[dict[str, Any]]:
    """The commonest reasons files failed in ``manifest``: ``{"error", "files", "example"}``."""
    groups: dict[str, list[Any]] = {}
    failed_status = arrow.scalar(Status.FAILED.value, pa.string())
    for batch in pq.ParquetFile(manifest).iter_batches(columns=["path", "status", "error"]):
        failed = batch.filter(pc.equal(batch.column("status"), failed_status))
        paths, errors = failed.column("path").to_pylist(), failed.column("error").to_pylist()
        for path, error in zip(paths, errors, strict=True):
            if error == NOT_PROCESSED:  # the run stopped first: no failure of the file's
                continue
            group = groups.setdefault(general(error or "failed", path), [0, path])
            group[0] += 1
    ordered = sorted(groups.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [{"error": error, "files": n, "example": example} for error, (n, example) in ordered]
