"""The manifest: one row per listed entry, merged from the plan and each shard's results (and,
in an increment, the rows it carries over from its base version), with the version it describes
in the Parquet file's own metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._listing.sharding import PLAN_SCHEMA
from mountproc._outputs.layout import results_path
from mountproc._outputs.metadata import ShardRecord
from mountproc._records import CARRIED, NOT_PROCESSED, Status
from mountproc._shard import sample

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
        pa.field("sha256", pa.string()),  # the source file's, where it was read
        pa.field("datum", pa.string()),  # a Valohai input's file: its datum://; else null
    ]
)
_VERSION_KEY = b"mountproc.version"


@dataclass(frozen=True)
class Version:
    """What a manifest says of the version it describes: which increment of the job made it
    (1: a full run), the dataset version its tars were registered in, every tar of the version,
    and which of them it kept from its base version (not published by the run that wrote it)."""

    increment: int = 1
    dataset: str | None = None
    tars: tuple[ShardRecord, ...] = ()
    carried: tuple[str, ...] = ()

    def encoded(self) -> bytes:
        """As the manifest's file metadata holds it."""
        data = {**asdict(self), "tars": [asdict(t) for t in self.tars]}
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def decoded(cls, raw: bytes) -> Version:
        """From the manifest's file metadata."""
        data = json.loads(raw)
        tars = tuple(ShardRecord(**t) for t in data["tars"])
        return cls(int(data["increment"]), data["dataset"], tars, tuple(data["carried"]))


def read_version(path: Path) -> Version | None:
    """The version a manifest describes; None for a manifest that does not say (an older one)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(_VERSION_KEY)
    return None if raw is None else Version.decoded(raw)


def write_manifest(
    plan: Path,
    results_dir: Path,
    tar_names: Mapping[int, str],
    out: Path,
    version: Version | None = None,
    carried: Path | None = None,
    datums: Mapping[str, str] | None = None,
) -> None:
    """Merge the plan with every shard's results into one row per listed entry, streaming; a
    row the plan marks as carried over is the next row of ``carried`` (a base version's);
    ``datums`` are the datum URIs of a Valohai input's files, by path."""
    reader = _ShardResults(results_dir)
    base = _carried_rows(carried)
    known = datums or {}
    schema = MANIFEST_SCHEMA.with_metadata({_VERSION_KEY: (version or Version()).encoded()})
    with pq.ParquetWriter(out, schema) as writer:
        for batch in pq.ParquetFile(plan).iter_batches():
            cols = batch.to_pydict()
            rows = [
                _carry(base, cols, i) if cols["skip_reason"][i] == CARRIED
                else {**_row(reader, tar_names, cols, i), "datum": known.get(cols["path"][i])}
                for i in range(batch.num_rows)
            ]  # fmt: skip
            table = {name: [row[name] for row in rows] for name in MANIFEST_SCHEMA.names}
            writer.write_batch(arrow.batch(table, MANIFEST_SCHEMA))
    reader.finish()
    if next(base, None) is not None:
        raise RuntimeError("the base version has more carried rows than the plan")


def _row(
    reader: _ShardResults, tar_names: Mapping[int, str], cols: dict[str, list[Any]], i: int
) -> dict[str, Any]:
    """A planned entry's row: listed, then processed by its shard (or excluded)."""
    row = {name: cols[name][i] for name in PLAN_SCHEMA.names if name != "skip_reason"}
    shard = row["shard"]
    status, error, members, changed, trace, sha = reader.resolve(
        row["path_raw"], shard, cols["skip_reason"][i]
    )
    published = status == Status.OK.value and shard is not None
    return {
        **row,
        "tar": tar_names.get(shard) if published else None,  # only where its outputs are
        "status": status,
        "error": error,
        "members": members,
        "changed": changed,
        "traceback": trace,
        "key": sample.key_of(members[0]) if members else None,
        "sha256": sha,
    }


def _carry(base: Iterator[dict[str, Any]], cols: dict[str, list[Any]], i: int) -> dict[str, Any]:
    """A carried entry's row: the base version's, unchanged."""
    row = next(base, None)
    raw = cols["path_raw"][i]
    if row is None or row["path_raw"] != raw:
        raise RuntimeError(f"the base version's carried rows do not match the plan at {raw!r}")
    return {"datum": None, **row}  # a manifest older than the datum column has none


def _carried_rows(path: Path | None) -> Iterator[dict[str, Any]]:
    """The carried rows of a base version, in plan order."""
    if path is None:
        return
    for batch in pq.ParquetFile(path).iter_batches():
        yield from batch.to_pylist()


Row = tuple[bytes, str, str | None, list[str], bool, str | None, str | None]
"""One file's results: raw path, status, error, members, changed, traceback, sha256."""
Resolved = tuple[str, str | None, list[str], bool, str | None, str | None]


class _ShardResults:
    """Reads shard result files in order as the plan streams past (shards are contiguous)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.shard: int | None = None
        self.rows: Iterator[Row] = iter(())
        self.found = False  # whether the current shard has a results file

    def resolve(self, raw: bytes, shard: int | None, reason: str | None) -> Resolved:
        if shard is None:
            return Status.EXCLUDED.value, reason, [], False, None, None
        if shard != self.shard:
            self.finish()
            self.shard, self.found, self.rows = shard, *self._load(shard)
        row = next(self.rows, None)
        if row is None:
            if self.found:
                raise RuntimeError(f"shard {shard} results have fewer rows than the plan")
            return Status.FAILED.value, NOT_PROCESSED, [], False, None, None
        if row[0] != raw:
            raise RuntimeError(f"shard {shard} results do not match the plan at {raw!r}")
        return row[1:]

    def finish(self) -> None:
        """Raise if the current shard's results file has rows the plan does not."""
        if self.found and next(self.rows, None) is not None:
            raise RuntimeError(f"shard {self.shard} results have more rows than the plan")

    def _load(self, shard: int) -> tuple[bool, Iterator[Row]]:
        path = results_path(self.directory, shard)
        if not path.exists():
            return False, iter(())
        cols = pq.ParquetFile(path).read().to_pydict()
        names = ("path_raw", "status", "error", "members", "changed", "traceback", "sha256")
        return True, zip(*(cols[n] for n in names), strict=True)
