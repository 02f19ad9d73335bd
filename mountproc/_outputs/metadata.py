"""What a run leaves beside its tars: per-shard records, the Parquet manifest (one row per
listed entry), the JSON summary, and ``valohai.metadata.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._jsonfile import write_json
from mountproc._records import FileResult, ShardResult

RESULTS_SCHEMA = pa.schema(
    [
        ("path_raw", pa.binary()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("members", pa.list_(pa.string())),
        ("changed", pa.bool_()),
        ("traceback", pa.string()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True)
class ShardRecord:
    """A finished, published shard: what went into which tar (also the completion marker)."""

    index: int
    tar: str
    sha256: str
    bytes: int
    files_ok: int
    files_failed: int
    files_skipped: int
    members: int
    samples: int = 0  # files with at least one member: WebDataset samples (0 in records of 0.1.0)
    md5: str = ""  # of the tar, for wids ("" in earlier records)


@dataclass(frozen=True)
class DatasetTarget:
    """Where published tars are registered in Valohai, or ``None`` for nowhere."""

    uri: str
    start_fresh: bool = False
    base: str | None = None
    aliases: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # the base version's files the new version leaves out

    def entry(self) -> dict[str, Any]:
        """The ``valohai.dataset-versions`` object for one file."""
        out: dict[str, Any] = {"uri": self.uri, "packaging": True}
        if self.base:
            out["from"] = self.base
        if self.exclude:
            out["exclude"] = list(self.exclude)
        if self.start_fresh:
            out["start_fresh"] = True
        if self.aliases:
            out["targeting_aliases"] = list(self.aliases)
        return out


def write_results(path: Path, results: Sequence[FileResult]) -> None:
    """Write one shard's per-file results."""
    table = arrow.table(
        {
            "path_raw": [os.fsencode(r.path) for r in results],
            "status": [r.status.value for r in results],
            "error": [_utf8(r.error) for r in results],
            "members": [list(r.members) for r in results],
            "changed": [r.changed for r in results],
            "traceback": [_utf8(r.traceback) for r in results],
            "sha256": [r.sha256 for r in results],
        },
        RESULTS_SCHEMA,
    )
    pq.write_table(table, path)


def _utf8(text: str | None) -> str | None:
    """``text`` as valid UTF-8 (a lone surrogate from an undecodable path becomes ``\\udcNN``)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def shard_record(result: ShardResult) -> ShardRecord:
    """The record of a published shard."""
    skipped = len(result.results) - result.files_ok - result.files_failed
    return ShardRecord(
        result.index,
        result.tar_name,
        result.sha256,
        result.tar_bytes,
        result.files_ok,
        result.files_failed,
        skipped,
        result.member_count,
        sum(1 for r in result.results if r.members),
        result.md5,
    )


def write_record(path: Path, record: ShardRecord) -> None:
    """Write a shard record atomically."""
    write_json(path, asdict(record))


def read_records(directory: Path) -> list[ShardRecord]:
    """Every shard record in ``directory``, in shard order."""
    return [
        ShardRecord(**json.loads(p.read_text())) for p in sorted(directory.glob("shard-*.json"))
    ]


def wids_index(name: str, records: Sequence[ShardRecord]) -> dict[str, Any]:
    """A ``wids`` shard index of the published tars (URLs relative to the index's directory,
    where the tars are), so ``wids.ShardListDataset(index)`` reads samples by number."""
    shards = [
        {"url": r.tar, "nsamples": r.samples, "filesize": r.bytes, "sha256": r.sha256}
        | ({"md5sum": r.md5} if r.md5 else {})
        for r in records
    ]
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name, "shardlist": shards}


def metadata_lines(
    records: Sequence[ShardRecord],
    extra_files: Sequence[str],
    target: DatasetTarget | None,
    tags: Sequence[str],
    common: Mapping[str, Any],
    aliases: Mapping[str, str] | None = None,
) -> list[str]:
    """One ``valohai.metadata.jsonl`` line per published file; ``aliases`` gives some of the
    extra files a Valohai alias (``datum://ALIAS`` then names the newest of them)."""
    named = aliases or {}
    base: dict[str, Any] = {}
    if target is not None:
        base["valohai.dataset-versions"] = [target.entry()]
    if tags:
        base["valohai.tags"] = list(tags)
    lines = []
    for r in records:
        meta = {
            **base,
            **common,
            "shard": r.index,
            "files": r.files_ok,
            "files_failed": r.files_failed,
            "members": r.members,
            "samples": r.samples,
            "bytes": r.bytes,
            "sha256": r.sha256,
        }
        lines.append(json.dumps({"file": r.tar, "metadata": meta}, sort_keys=True))
    for f in extra_files:
        alias = {"valohai.alias": named[f]} if f in named else {}
        lines.append(
            json.dumps({"file": f, "metadata": {**base, **common, **alias}}, sort_keys=True)
        )
    return lines
