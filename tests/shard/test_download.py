"""Tests of ``_shard.download`` through ``run_shard``: an on-demand input's files downloaded from
a real HTTP server on 127.0.0.1 (``helpers.inputserver``), no cluster."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import textwrap
from pathlib import Path

import pytest
from helpers.inputserver import InputServer, Store, write_valohai_config

from mountproc._jobfile import read_job_file
from mountproc._records import FileEntry, ShardResult, ShardSpec, Status
from mountproc._shard.download import ATTEMPTS, INLINE_MAX
from mountproc._shard.worker import run_shard
from mountproc._valohai.inputs import find_input, remote_files

COPY_JOB = '''
"""Copies each file into its sample: what the worker got, byte for byte."""
from mountproc import Job

job = Job(name="copy", source="/mnt/none")


@job.transform
def copy(src, ctx):
    return {"bin": src.read_bytes(), "sha.txt": src.sha256}
'''

FILES = {f"d{i % 2}/f{i}.bin": os.urandom(1000 + 37 * i) for i in range(6)}


def _run(
    tmp_path: Path,
    server: InputServer,
    config: Path | None = None,
    sizes: dict[str, int] | None = None,
) -> ShardResult:
    """Run one shard over every file of the server's input, as a worker does (with
    ``config``, from the inputs.json written there already)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = tmp_path / "config"
        write_valohai_config(config, server, sizes=sizes)
    found = find_input("images", {"VH_CONFIG_DIR": str(config)})
    entries = tuple(FileEntry(f.name, f.size, 0) for f in found.files)
    job = tmp_path / "copy_job.py"
    job.write_text(textwrap.dedent(COPY_JOB))
    spec = ShardSpec(
        0, read_job_file(job), "{}", str(found.path), str(tmp_path / "work"), "copy-000000.tar",
        entries, remote=remote_files(found, entries),
    )  # fmt: skip
    return run_shard(spec)


def _samples(result: ShardResult) -> dict[str, bytes]:
    with tarfile.open(result.tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _copied(result: ShardResult) -> dict[str, bytes]:
    """Each file's bytes as its sample holds them, by path."""
    samples = _samples(result)
    out = {}
    for r in result.results:
        if r.status is Status.OK:
            member = next(m for m in r.members if m.endswith(".bin"))
            out[r.path] = samples[member]
    return out


def test_every_file_is_downloaded_once_hashed_and_handed_over(tmp_path: Path) -> None:
    store = Store(dict(FILES))
    with InputServer(store) as server:
        result = _run(tmp_path, server)
    assert _copied(result) == FILES
    for r in result.results:
        assert r.sha256 == hashlib.sha256(FILES[r.path]).hexdigest()
    assert store.served == {name: 1 for name in FILES}
    assert store.renewals == 0


def test_a_large_file_streams_to_scratch_and_is_read_from_there(tmp_path: Path) -> None:
    big = os.urandom(INLINE_MAX + 4096)
    store = Store({"big.bin": big, "small.bin": b"s" * 10})
    with InputServer(store) as server:
        result = _run(tmp_path, server)
    assert _copied(result) == {"big.bin": big, "small.bin": b"s" * 10}
    assert not list((tmp_path / "work").rglob("download-*"))  # the copy went with its shard


def test_urls_that_expire_mid_shard_are_renewed_once_for_all(tmp_path: Path) -> None:
    store = Store(dict(FILES), expire_all_after=2)
    with InputServer(store) as server:
        result = _run(tmp_path, server)
    assert _copied(result) == FILES
    assert sum(store.refused.values()) >= 1  # the signed URLs did expire on the way
    assert store.renewals == 1
    assert store.bad_tokens == 0
    assert store.served == {name: 1 for name in FILES}


def test_urls_that_expire_after_one_use_are_renewed_for_the_next_shard(tmp_path: Path) -> None:
    store = Store(dict(FILES), uses=1)
    with InputServer(store) as server:
        write_valohai_config(tmp_path / "config", server)
        first = _run(tmp_path / "a", server, tmp_path / "config")
        again = _run(tmp_path / "b", server, tmp_path / "config")  # URLs each used once already
    assert _copied(first) == _copied(again) == FILES
    assert store.renewals >= 1
    assert store.served == {name: 2 for name in FILES}


def test_a_500_and_a_reset_connection_are_retried(tmp_path: Path) -> None:
    a, b = sorted(FILES)[:2]
    store = Store(dict(FILES), faults={a: ["500"], b: ["reset", "500"]})
    with InputServer(store) as server:
        result = _run(tmp_path, server)
    assert _copied(result) == FILES
    assert store.requests[a] == 2
    assert store.requests[b] == 3
    assert store.served == {name: 1 for name in FILES}


def test_a_server_that_keeps_failing_fails_that_file_only(tmp_path: Path) -> None:
    bad = sorted(FILES)[0]
    store = Store(dict(FILES), faults={bad: ["500"] * ATTEMPTS})
    with InputServer(store) as server:
        result = _run(tmp_path, server)
    by_path = {r.path: r for r in result.results}
    assert by_path[bad].status is Status.FAILED
    assert "HTTP 500" in (by_path[bad].error or "")
    assert f"after {ATTEMPTS} attempts" in (by_path[bad].error or "")
    assert store.requests[bad] == ATTEMPTS
    assert _copied(result) == {k: v for k, v in FILES.items() if k != bad}


@pytest.mark.parametrize("no_length", [False, True])
@pytest.mark.parametrize("delta", [1, -1, -500])
def test_a_wrong_size_fails_that_file_only(tmp_path: Path, delta: int, no_length: bool) -> None:
    wrong = sorted(FILES)[3]
    listed = len(FILES[wrong]) + delta
    with InputServer(Store(dict(FILES), no_length=no_length)) as server:
        result = _run(tmp_path, server, sizes={wrong: listed})
    by_path = {r.path: r for r in result.results}
    assert by_path[wrong].status is Status.FAILED
    error = by_path[wrong].error or ""
    assert "size differs from the input's entry" in error
    assert f"inputs.json says {listed}" in error
    if delta > 0 or not no_length:  # the whole body, or its Content-Length, gave the size
        assert f"{len(FILES[wrong])} bytes" in error
    else:  # a body longer than listed is cut off just past it
        assert f"more than {listed} bytes" in error
    assert _copied(result) == {k: v for k, v in FILES.items() if k != wrong}


def test_a_refused_token_fails_the_expired_files_with_that_reason(tmp_path: Path) -> None:
    store = Store(dict(FILES), uses=0)  # every URL is refused: renewals are needed
    with InputServer(store) as server:
        config = tmp_path / "config"
        write_valohai_config(config, server)
        api = json.loads((config / "api.json").read_text())
        api["input_request"]["headers"]["Authorization"] = "Execution-Token wrong"
        (tmp_path / "api.json").write_text(json.dumps(api))
        os.replace(tmp_path / "api.json", config / "api.json")
        found = find_input("images", {"VH_CONFIG_DIR": str(config)})
        entries = tuple(FileEntry(f.name, f.size, 0) for f in found.files)
        job = tmp_path / "copy_job.py"
        job.write_text(textwrap.dedent(COPY_JOB))
        spec = ShardSpec(
            0, read_job_file(job), "{}", str(found.path), str(tmp_path / "w"), "c.tar", entries,
            remote=remote_files(found, entries),
        )  # fmt: skip
        result = run_shard(spec)
    assert {r.status for r in result.results} == {Status.FAILED}
    assert all("refused this execution's token" in (r.error or "") for r in result.results)
    assert store.bad_tokens >= 1


@pytest.mark.parametrize("count", [1, 3])
def test_entries_keep_their_order_whatever_arrives_first(tmp_path: Path, count: int) -> None:
    files = {f"z{i}.bin": bytes([i]) * (5000 - 100 * i) for i in range(count * 4)}
    with InputServer(Store(files)) as server:
        result = _run(tmp_path, server)
    assert [r.path for r in result.results] == list(files)  # the spec's order
    assert _copied(result) == files
