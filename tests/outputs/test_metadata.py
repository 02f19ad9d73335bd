"""Tests of ``_outputs.metadata``: shard results, the manifest, records and Valohai metadata."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mountproc._jsonfile import write_json
from mountproc._listing.listing import Patterns, write_listing
from mountproc._listing.sharding import ShardBounds, iter_shards, write_plan
from mountproc._outputs.manifest import MANIFEST_SCHEMA, write_manifest
from mountproc._outputs.metadata import (
    DatasetTarget,
    ShardRecord,
    metadata_lines,
    read_records,
    shard_record,
    wids_index,
    write_record,
    write_results,
)
from mountproc._records import NOT_PROCESSED, FileEntry, FileResult, ShardResult, Status

UNDECODABLE = os.fsdecode(b"c/caf\xe9.txt")


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    """A tree of 6 files and a FIFO, listed and cut into shards of at most 2 files:
    shard 0 = a/1, a/2; shard 1 = b/3, c/4; shard 2 = c/5, c/caf\\xe9."""
    src = tmp_path / "src"
    for rel in ("a/1.txt", "a/2.txt", "b/3.txt", "c/4.txt", "c/5.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    (src / UNDECODABLE).write_bytes(b"x" * 10)
    os.mkfifo(src / "b" / "pipe")
    listing = tmp_path / "listing.parquet"
    write_listing(src, Patterns(["*"], []), listing)
    out = tmp_path / "plan.parquet"
    result = write_plan(listing, out, ShardBounds(max_files=2, max_bytes=1 << 30))
    assert result.shards == 3
    assert result.files == 6
    return out


def shards_of(plan: Path) -> dict[int, tuple[FileEntry, ...]]:
    return dict(iter_shards(plan))


def results_dir(tmp_path: Path) -> Path:
    path = tmp_path / "results"
    path.mkdir(exist_ok=True)
    return path


def results_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:06d}.parquet"


def manifest_rows(path: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    return rows


def test_manifest_merges_plan_and_results(plan: Path, tmp_path: Path) -> None:
    shards = shards_of(plan)
    assert [[e.path for e in shards[i]] for i in range(3)] == [
        ["a/1.txt", "a/2.txt"],
        ["b/3.txt", "c/4.txt"],
        ["c/5.txt", UNDECODABLE],
    ]
    directory = results_dir(tmp_path)
    write_results(
        results_path(directory, 0),
        [
            FileResult("a/1.txt", Status.OK, None, ("a/1%2Etxt.jpg",)),
            FileResult("a/2.txt", Status.FAILED, "ValueError: broken"),
        ],
    )
    write_results(
        results_path(directory, 2),
        [
            FileResult("c/5.txt", Status.SKIPPED, "too small"),
            FileResult(UNDECODABLE, Status.FAILED, f"ValueError: cannot read {UNDECODABLE}"),
        ],
    )
    out = tmp_path / "manifest.parquet"
    write_manifest(plan, directory, {0: "job-000000.tar"}, out)

    assert pq.read_schema(out).names == MANIFEST_SCHEMA.names
    for column in ("path", "size", "mtime_ns", "shard", "status", "error", "members", "tar"):
        assert column in MANIFEST_SCHEMA.names
    assert "skip_reason" not in MANIFEST_SCHEMA.names
    rows = {r["path_raw"]: r for r in manifest_rows(out)}
    assert list(rows) == [
        b"a/1.txt",
        b"a/2.txt",
        b"b/3.txt",
        b"b/pipe",
        b"c/4.txt",
        b"c/5.txt",
        b"c/caf\xe9.txt",
    ]

    def view(raw: bytes) -> tuple[object, ...]:
        r = rows[raw]
        return r["shard"], r["tar"], r["status"], r["error"], r["members"]

    assert view(b"a/1.txt") == (0, "job-000000.tar", "ok", None, ["a/1%2Etxt.jpg"])
    # a failed file has no members, so its row names no tar
    assert view(b"a/2.txt") == (0, None, "failed", "ValueError: broken", [])
    assert view(b"b/3.txt") == (1, None, "failed", NOT_PROCESSED, [])
    assert view(b"c/4.txt") == (1, None, "failed", NOT_PROCESSED, [])
    assert view(b"c/5.txt") == (2, None, "skipped", "too small", [])
    assert view(b"c/caf\xe9.txt") == (
        2,
        None,
        "failed",
        "ValueError: cannot read c/caf\\udce9.txt",
        [],
    )
    pipe = rows[b"b/pipe"]
    assert (pipe["shard"], pipe["tar"], pipe["status"], pipe["members"]) == (
        None,
        None,
        "excluded",
        [],
    )
    assert pipe["kind"] == "fifo"
    assert isinstance(pipe["error"], str)
    assert "not a regular file" in pipe["error"]

    one = rows[b"a/1.txt"]
    assert one["path"] == "a/1.txt"
    assert one["kind"] == "file"
    assert one["size"] == len(b"a/1.txt")
    assert one["mtime_ns"] == (tmp_path / "src" / "a" / "1.txt").stat().st_mtime_ns
    assert rows[b"c/caf\xe9.txt"]["path"] == "c/caf\\xe9.txt"
    assert rows[b"c/caf\xe9.txt"]["size"] == 10


def test_manifest_without_any_results(plan: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.parquet"
    write_manifest(plan, results_dir(tmp_path), {}, out)
    rows = manifest_rows(out)
    assert len(rows) == 7
    assert [r["status"] for r in rows].count("excluded") == 1
    assert all(r["error"] == NOT_PROCESSED for r in rows if r["shard"] is not None)
    assert all(r["tar"] is None for r in rows)


def test_manifest_of_an_empty_plan(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    listing, plan, out = (tmp_path / n for n in ("l.parquet", "p.parquet", "m.parquet"))
    write_listing(tmp_path / "src", Patterns(["*"], []), listing)
    write_plan(listing, plan, ShardBounds(2, 100))
    write_manifest(plan, results_dir(tmp_path), {}, out)
    assert pq.read_table(out).num_rows == 0
    assert pq.read_schema(out).names == MANIFEST_SCHEMA.names


def ok_results(entries: tuple[FileEntry, ...]) -> list[FileResult]:
    return [FileResult(e.path, Status.OK) for e in entries]


def test_results_out_of_order_raise(plan: Path, tmp_path: Path) -> None:
    directory = results_dir(tmp_path)
    write_results(results_path(directory, 0), ok_results(shards_of(plan)[0])[::-1])
    with pytest.raises(RuntimeError, match="shard 0 results do not match the plan"):
        write_manifest(plan, directory, {}, tmp_path / "m.parquet")


def test_results_with_too_few_rows_raise(plan: Path, tmp_path: Path) -> None:
    directory = results_dir(tmp_path)
    write_results(results_path(directory, 1), ok_results(shards_of(plan)[1])[:1])
    with pytest.raises(RuntimeError, match="shard 1 results have fewer rows than the plan"):
        write_manifest(plan, directory, {}, tmp_path / "m.parquet")


@pytest.mark.parametrize("shard", [0, 2])
def test_results_with_too_many_rows_raise(plan: Path, tmp_path: Path, shard: int) -> None:
    directory = results_dir(tmp_path)
    extra = [*ok_results(shards_of(plan)[shard]), FileResult("zzz", Status.OK)]
    write_results(results_path(directory, shard), extra)
    with pytest.raises(RuntimeError, match=f"shard {shard} results have more rows than the plan"):
        write_manifest(plan, directory, {}, tmp_path / "m.parquet")


def test_write_results_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    results = [
        FileResult("a", Status.OK, None, ("a.jpg", "a.json"), changed=True, sha256="ab" * 32),
        FileResult(os.fsdecode(b"\xff"), Status.FAILED, "OSError: \udcff", traceback="T \udcff"),
        FileResult("c", Status.SKIPPED, "declined"),
    ]
    write_results(path, results)
    cols = pq.read_table(path).to_pydict()
    assert cols == {
        "path_raw": [b"a", b"\xff", b"c"],
        "status": ["ok", "failed", "skipped"],
        "error": [None, "OSError: \\udcff", "declined"],
        "members": [["a.jpg", "a.json"], [], []],
        "changed": [True, False, False],
        "traceback": [None, "T \\udcff", None],
        "sha256": ["ab" * 32, None, None],
    }


# --- records ---------------------------------------------------------------------------------


def shard_result(index: int = 4) -> ShardResult:
    return ShardResult(
        index=index,
        tar_path="/scratch/x.tar",
        tar_name=f"job-{index:06d}.tar",
        sha256="ab" * 32,
        tar_bytes=10240,
        results=(
            FileResult("a", Status.OK, None, ("a.jpg", "a.json")),
            FileResult("b", Status.OK, None, ("b.jpg",)),
            FileResult("c", Status.FAILED, "E"),
            FileResult("d", Status.SKIPPED, "S"),
            FileResult("e", Status.SKIPPED, "S"),
        ),
    )


def test_shard_record() -> None:
    assert shard_record(shard_result()) == ShardRecord(
        index=4,
        tar="job-000004.tar",
        sha256="ab" * 32,
        bytes=10240,
        files_ok=2,
        files_failed=1,
        files_skipped=2,
        members=3,
        samples=2,
    )


def test_samples_count_only_files_with_members() -> None:
    """A file whose transform returned no output is ok but no WebDataset sample."""
    result = replace(
        shard_result(),
        results=(
            FileResult("a", Status.OK, None, ("a.jpg", "a.json")),
            FileResult("b", Status.OK, None, ()),
        ),
    )
    record = shard_record(result)
    assert (record.files_ok, record.samples, record.members) == (2, 1, 2)
    (shard,) = wids_index("job", [record])["shardlist"]
    assert (shard["url"], shard["nsamples"]) == ("job-000004.tar", 1)


def test_records_round_trip_in_shard_order(tmp_path: Path) -> None:
    records = [shard_record(shard_result(i)) for i in (12, 3, 100)]
    for r in records:
        write_record(tmp_path / f"shard-{r.index:06d}.json", r)
    (tmp_path / "summary.json").write_text("{}")
    assert read_records(tmp_path) == sorted(records, key=lambda r: r.index)
    assert not list(tmp_path.glob("*.tmp"))


def test_write_json_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    write_json(path, {"b": 1, "a": Path("/x")})
    assert json.loads(path.read_text()) == {"a": "/x", "b": 1}
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]

    def fail(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"a": "/x", "b": 1}  # the old file is intact


# --- valohai.metadata.jsonl ------------------------------------------------------------------


def parse(lines: list[str]) -> list[dict[str, object]]:
    out = []
    for line in lines:
        assert "\n" not in line
        obj = json.loads(line)
        assert set(obj) == {"file", "metadata"}
        out.append(obj)
    return out


RECORDS = [shard_record(shard_result(0)), shard_record(shard_result(1))]
EXTRA = ["job-manifest.parquet", "job-summary.json"]
COMMON = {"mountproc.job": "job", "source": "/mnt/src"}


def test_metadata_lines_with_a_dataset_target() -> None:
    target = DatasetTarget(
        "dataset://images/v2", start_fresh=True, base="dataset://images/v1", aliases=("latest",)
    )
    objs = parse(metadata_lines(RECORDS, EXTRA, target, ["test"], COMMON))
    assert [o["file"] for o in objs] == ["job-000000.tar", "job-000001.tar", *EXTRA]
    expected = [
        {
            "uri": "dataset://images/v2",
            "packaging": True,
            "from": "dataset://images/v1",
            "start_fresh": True,
            "targeting_aliases": ["latest"],
        }
    ]
    for o in objs:
        meta = o["metadata"]
        assert isinstance(meta, dict)
        assert meta["valohai.dataset-versions"] == expected
        assert meta["valohai.tags"] == ["test"]
        assert meta["mountproc.job"] == "job"
        assert meta["source"] == "/mnt/src"
    first = objs[0]["metadata"]
    assert isinstance(first, dict)
    assert first["sha256"] == "ab" * 32
    assert first["files"] == 2
    assert first["files_failed"] == 1
    assert first["bytes"] == 10240
    assert first["members"] == 3
    assert first["shard"] == 0
    manifest = objs[2]["metadata"]
    assert isinstance(manifest, dict)
    assert "sha256" not in manifest


def test_metadata_lines_minimal_target() -> None:
    objs = parse(metadata_lines(RECORDS[:1], [], DatasetTarget("dataset://d/v"), [], {}))
    meta = objs[0]["metadata"]
    assert isinstance(meta, dict)
    assert meta["valohai.dataset-versions"] == [{"uri": "dataset://d/v", "packaging": True}]
    assert "valohai.tags" not in meta


def test_metadata_lines_without_a_target() -> None:
    objs = parse(metadata_lines(RECORDS, EXTRA, None, [], COMMON))
    assert len(objs) == 4
    for o in objs:
        meta = o["metadata"]
        assert isinstance(meta, dict)
        assert "valohai.dataset-versions" not in meta
        assert "valohai.tags" not in meta
        assert meta["mountproc.job"] == "job"


def test_metadata_lines_of_nothing() -> None:
    assert metadata_lines([], [], DatasetTarget("dataset://d/v"), ["t"], {}) == []
