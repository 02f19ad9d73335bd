"""What a run leaves beside its tars: per-shard records, the Parquet manifest (one row per
listed entry), the JSON summary, and ``valohai.metadata.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc._jsonfile import write_json
from mountproc._listing.sharding import PLAN_SCHEMA
from mountproc._outputs.layout import results_path
from mountproc._records import NOT_PROCESSED, FileResult, ShardResult, Status
from mountproc._shard import sample

RESULTS_SCHEMA = pa.schema(
    [
        ("path_raw", pa.binary()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("members", pa.list_(pa.string())),
        ("changed", pa.bool_()),
        ("traceback", pa.string()),
    ]
)
MANIFEST_SCHEMA = pa.schema(
    [f for f in PLAN_SCHEMA if f.name != "skip_reason"]
    + [
        pa.field("tar", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("members", pa.list_(pa.string())),
        pa.field("changed", pa.bool_()),
        pa.field("traceback", pa.string()),
        pa.field("key", pa.string()),  # the sample's key (WebDataset's __key__), if a sample
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


@dataclass(frozen=True)
class DatasetTarget:
    """Where published tars are registered in Valohai, or ``None`` for nowhere."""

    uri: str
    start_fresh: bool = False
    base: str | None = None
    aliases: tuple[str, ...] = ()

    def entry(self) -> dict[str, Any]:
        """The ``valohai.dataset-versions`` object for one file."""
        out: dict[str, Any] = {"uri": self.uri, "packaging": True}
        if self.base:
            out["from"] = self.base
        if self.start_fresh:
            out["start_fresh"] = True
        if self.aliases:
            out["targeting_aliases"] = list(self.aliases)
        return out


def write_results(path: Path, results: Sequence[FileResult]) -> None:
    """Write one shard's per-file results."""
    table = pa.table(
        {
            "path_raw": [os.fsencode(r.path) for r in results],
            "status": [r.status.value for r in results],
            "error": [_utf8(r.error) for r in results],
            "members": [list(r.members) for r in results],
            "changed": [r.changed for r in results],
            "traceback": [_utf8(r.traceback) for r in results],
        },
        schema=RESULTS_SCHEMA,
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
    )


def write_record(path: Path, record: ShardRecord) -> None:
    """Write a shard record atomically."""
    write_json(path, asdict(record))


def read_records(directory: Path) -> list[ShardRecord]:
    """Every shard record in ``directory``, in shard order."""
    return [
        ShardRecord(**json.loads(p.read_text())) for p in sorted(directory.glob("shard-*.json"))
    ]


def write_manifest(plan: Path, results_dir: Path, tar_names: Mapping[int, str], out: Path) -> None:
    """Merge the plan with every shard's results into one row per listed entry, streaming."""
    reader = _ShardResults(results_dir)
    with pq.ParquetWriter(out, MANIFEST_SCHEMA) as writer:
        for batch in pq.ParquetFile(plan).iter_batches():
            cols = batch.to_pydict()
            rows = [
                reader.resolve(raw, shard, reason)
                for raw, shard, reason in zip(
                    cols["path_raw"], cols["shard"], cols["skip_reason"], strict=True
                )
            ]
            cols.pop("skip_reason")
            names = ("status", "error", "members", "changed", "traceback")
            columns = zip(*rows, strict=True) if rows else ([] for _ in names)
            cols.update({name: list(col) for name, col in zip(names, columns, strict=True)})
            cols["key"] = [sample.key_of(m[0]) if m else None for m in cols["members"]]
            cols["tar"] = [  # only where the file's outputs are: ok rows of a published shard
                tar_names.get(shard) if status == Status.OK.value and shard is not None else None
                for shard, status in zip(cols["shard"], cols["status"], strict=True)
            ]
            writer.write_batch(pa.RecordBatch.from_pydict(cols, schema=MANIFEST_SCHEMA))
    reader.finish()


Row = tuple[bytes, str, str | None, list[str], bool, str | None]
"""One file's results: raw path, status, error, members, changed, traceback."""


class _ShardResults:
    """Reads shard result files in order as the plan streams past (shards are contiguous)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.shard: int | None = None
        self.rows: Iterator[Row] = iter(())
        self.found = False  # whether the current shard has a results file

    def resolve(
        self, raw: bytes, shard: int | None, reason: str | None
    ) -> tuple[str, str | None, list[str], bool, str | None]:
        if shard is None:
            return Status.EXCLUDED.value, reason, [], False, None
        if shard != self.shard:
            self.finish()
            self.shard, self.found, self.rows = shard, *self._load(shard)
        row = next(self.rows, None)
        if row is None:
            if self.found:
                raise RuntimeError(f"shard {shard} results have fewer rows than the plan")
            return Status.FAILED.value, NOT_PROCESSED, [], False, None
        if row[0] != raw:
            raise RuntimeError(f"shard {shard} results do not match the plan at {raw!r}")
        return row[1], row[2], row[3], row[4], row[5]

    def finish(self) -> None:
        """Raise if the current shard's results file has rows the plan does not."""
        if self.found and next(self.rows, None) is not None:
            raise RuntimeError(f"shard {self.shard} results have more rows than the plan")

    def _load(self, shard: int) -> tuple[bool, Iterator[Row]]:
        path = results_path(self.directory, shard)
        if not path.exists():
            return False, iter(())
        cols = pq.read_table(path).to_pydict()
        rows = zip(
            cols["path_raw"],
            cols["status"],
            cols["error"],
            cols["members"],
            cols["changed"],
            cols["traceback"],
            strict=True,
        )
        return True, rows


def wids_index(name: str, records: Sequence[ShardRecord]) -> dict[str, Any]:
    """A ``wids`` shard index of the published tars (URLs relative to the index's directory,
    where the tars are), so ``wids.ShardListDataset(index)`` reads samples by number."""
    shards = [
        {"url": r.tar, "nsamples": r.samples, "filesize": r.bytes, "sha256": r.sha256}
        for r in records
    ]
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name, "shardlist": shards}


def metadata_lines(
    records: Sequence[ShardRecord],
    extra_files: Sequence[str],
    target: DatasetTarget | None,
    tags: Sequence[str],
    common: Mapping[str, Any],
) -> list[str]:
    """One ``valohai.metadata.jsonl`` line per published file."""
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
    lines += [
        json.dumps({"file": f, "metadata": {**base, **common}}, sort_keys=True) for f in extra_files
    ]
    return lines
