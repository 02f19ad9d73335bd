"""Tests of ``_shard.worker``: ``run_shard`` called directly on a job file, no cluster."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from mountproc._errors import DiskFullError, JobSetupError
from mountproc._jobfile import load_job, read_job_file
from mountproc._mounts.source import check_source
from mountproc._outputs.metadata import write_results
from mountproc._records import FileEntry, JobRef, ShardResult, ShardSpec, Status, WorkerCheck
from mountproc._shard import failures
from mountproc._shard import worker as _worker
from mountproc._shard.failures import MAX_ERROR_CHARS
from mountproc._shard.sample import member_key
from mountproc._shard.watchdog import ShardNotes
from mountproc._shard.worker import run_shard

JOB_TEXT = '''
"""A test job: upper-cases text files, with one misbehaviour per special file name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mountproc import Context, Job, Skip, SourceFile


class Params(BaseModel):
    setup_log: str = ""
    tag: str = "t"
    fail_setup: bool = False


job = Job(name="upper-text", params=Params)


@job.setup
def setup(params: Params) -> dict[str, str]:
    if params.fail_setup:
        raise RuntimeError("setup exploded")
    if params.setup_log:
        with open(params.setup_log, "a") as f:
            f.write("setup\\n")
    return {"tag": params.tag}


@job.transform
def transform(src: SourceFile, ctx: Context[Params]) -> Any:
    name = src.relpath.rsplit("/", 1)[-1]
    (ctx.tmp_dir / "scratch.bin").write_bytes(b"x")
    if name == "bad.txt":
        raise ValueError("bad input\\nsecond line")
    if name == "decline.txt":
        return None
    if name == "skip.txt":
        raise Skip("too small")
    if name == "skip-silent.txt":
        raise Skip()
    if name == "empty.txt":
        return {}
    if name == "escape.txt":
        return {"../evil": b"x"}
    if name == "slash.txt":
        return {"a/b": b"x"}
    if name == "list.txt":
        return ["txt"]
    if name == "long.txt":
        raise ValueError("x" * 2000)
    if name.startswith("boom"):
        raise ValueError("cannot handle " + src.relpath)
    data = src.read_bytes()
    return {
        "txt": data.upper(),
        "meta.json": {
            "name": name,
            "size": src.size,
            "mtime_ns": src.mtime_ns,
            "state": ctx.state["tag"],
            "shard": ctx.shard,
            "tmp_dir": str(ctx.tmp_dir),
        },
    }
'''


@pytest.fixture(scope="module")
def job_ref(tmp_path_factory: pytest.TempPathFactory) -> JobRef:
    path = tmp_path_factory.mktemp("job") / "upper_job.py"
    path.write_text(JOB_TEXT)
    return read_job_file(path)


def make_tree(root: Path, files: dict[str, bytes]) -> list[FileEntry]:
    """Write ``files`` under ``root``; return their entries in the given order."""
    entries = []
    for rel, data in files.items():
        path = root / os.fsencode(rel).decode("utf-8", "surrogateescape")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        st = path.stat()
        entries.append(FileEntry(rel, st.st_size, st.st_mtime_ns))
    return entries


def make_spec(
    job_ref: JobRef,
    tmp_path: Path,
    entries: list[FileEntry],
    index: int = 3,
    **params: Any,
) -> ShardSpec:
    params.setdefault("setup_log", str(tmp_path / "setup.log"))
    job = load_job(job_ref)
    params_json = job.parse_params(params).model_dump_json()
    return ShardSpec(
        index=index,
        job=job_ref,
        params_json=params_json,
        source_root=str(tmp_path / "src"),
        work_dir=str(tmp_path / "work"),
        tar_name=f"upper-{index:06d}.tar",
        entries=tuple(entries),
    )


def tar_members(path: str) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        out = []
        for info in tf.getmembers():
            f = tf.extractfile(info)
            assert f is not None
            out.append((info.name, f.read()))
        return out


def by_path(result: ShardResult) -> dict[str, Any]:
    return {r.path: r for r in result.results}


SPECIAL = {
    "bad.txt": b"b",
    "decline.txt": b"d",
    "empty.txt": b"e",
    "escape.txt": b"e",
    "list.txt": b"l",
    "long.txt": b"l",
    "skip-silent.txt": b"s",
    "skip.txt": b"s",
    "slash.txt": b"s",
}


def test_statuses_and_reasons(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"a/good.txt": b"good", **SPECIAL})
    result = run_shard(make_spec(job_ref, tmp_path, entries))
    got = {r.path: (r.status, r.error) for r in result.results}
    assert got == {
        "a/good.txt": (Status.OK, None),
        "bad.txt": (Status.FAILED, "ValueError: bad input second line"),
        "decline.txt": (Status.SKIPPED, "declined by the transform"),
        "empty.txt": (Status.OK, None),
        "escape.txt": (Status.FAILED, got["escape.txt"][1]),
        "list.txt": (
            Status.FAILED,
            "TypeError: transform must return a mapping of suffix to content, not list",
        ),
        "long.txt": (Status.FAILED, got["long.txt"][1]),
        "skip-silent.txt": (Status.SKIPPED, "declined by the transform"),
        "skip.txt": (Status.SKIPPED, "too small"),
        "slash.txt": (Status.FAILED, got["slash.txt"][1]),
    }
    assert [r.path for r in result.results] == [e.path for e in entries]
    long_error = got["long.txt"][1]
    assert long_error is not None
    assert long_error.startswith("ValueError: xxx")
    assert len(long_error) == MAX_ERROR_CHARS
    assert result.files_ok == 2
    assert result.files_failed == 5
    assert by_path(result)["empty.txt"].members == ()


@pytest.mark.parametrize(("name", "suffix"), [("escape.txt", "../evil"), ("slash.txt", "a/b")])
def test_unsafe_output_suffix_fails_the_file(
    job_ref: JobRef, tmp_path: Path, name: str, suffix: str
) -> None:
    entries = make_tree(tmp_path / "src", {name: b"x", "ok.txt": b"ok"})
    result = run_shard(make_spec(job_ref, tmp_path, entries))
    res = by_path(result)[name]
    assert res.status is Status.FAILED
    assert res.error.startswith("ValueError: invalid output suffix")
    assert suffix in res.error
    assert res.members == ()
    names = [n for n, _ in tar_members(result.tar_path)]
    assert names == ["ok%2Etxt.json", "ok%2Etxt.meta.json", "ok%2Etxt.txt"]
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [result.tar_name]


def test_tar_holds_the_outputs_adjacent_and_ordered(job_ref: JobRef, tmp_path: Path) -> None:
    files = {"x.y/a.b.txt": b"first", "x/y.z": b"second", "bad.txt": b"", "z.txt": b"third"}
    entries = make_tree(tmp_path / "src", files)
    spec = make_spec(job_ref, tmp_path, entries, index=7, tag="T")
    result = run_shard(spec)
    members = tar_members(result.tar_path)
    expected_names: list[str] = []
    for rel in ("x.y/a.b.txt", "x/y.z", "z.txt"):
        key = member_key(rel)
        names = (f"{key}.json", f"{key}.meta.json", f"{key}.txt")
        expected_names += names
        assert by_path(result)[rel].members == names
    assert [n for n, _ in members] == expected_names
    assert result.member_count == len(expected_names)
    contents = dict(members)
    for rel, data in files.items():
        if rel == "bad.txt":
            continue
        key = member_key(rel)
        assert contents[f"{key}.txt"] == data.upper()
        meta = json.loads(contents[f"{key}.meta.json"])
        entry = next(e for e in entries if e.path == rel)
        assert json.loads(contents[f"{key}.json"]) == {
            "path": rel,
            "path_b64": base64.b64encode(rel.encode()).decode(),
            "size": len(data),
            "mtime_ns": entry.mtime_ns,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        assert meta["name"] == rel.rsplit("/", 1)[-1]
        assert meta["size"] == entry.size == len(data)
        assert meta["mtime_ns"] == entry.mtime_ns
        assert meta["state"] == "T"
        assert meta["shard"] == 7


def test_shard_result_facts(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    spec = make_spec(job_ref, tmp_path, entries, index=11)
    result = run_shard(spec)
    tar = Path(spec.work_dir) / spec.tar_name
    assert result.index == 11
    assert result.tar_name == "upper-000011.tar"
    assert Path(result.tar_path) == tar
    data = tar.read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.tar_bytes == len(data)
    assert result.worker
    assert sorted(p.name for p in tar.parent.iterdir()) == [tar.name]  # no partial, no tmp


def test_same_shard_gives_the_same_tar(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"a.txt": b"a", "b/c.txt": b"c"})
    spec = make_spec(job_ref, tmp_path, entries)
    first = run_shard(spec)
    first_bytes = Path(first.tar_path).read_bytes()
    Path(first.tar_path).unlink()
    second = run_shard(spec)
    assert Path(second.tar_path).read_bytes() == first_bytes
    assert second.sha256 == first.sha256


def test_vanished_file_fails_with_file_not_found(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"here.txt": b"h", "gone.txt": b"g"})
    (tmp_path / "src" / "gone.txt").unlink()
    result = run_shard(make_spec(job_ref, tmp_path, entries))
    gone = by_path(result)["gone.txt"]
    assert gone.status is Status.FAILED
    assert gone.error.startswith("FileNotFoundError: ")
    assert "gone.txt" in gone.error
    assert by_path(result)["here.txt"].status is Status.OK


def test_setup_runs_once_per_process(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    log = tmp_path / "setup.log"
    for index, entry in enumerate(entries):
        result = run_shard(make_spec(job_ref, tmp_path, [entry], index=index, tag="once"))
        assert result.files_ok == 1
    assert log.read_text() == "setup\n"
    run_shard(make_spec(job_ref, tmp_path, entries[:1], index=9, tag="other"))
    assert log.read_text() == "setup\n" * 2  # other parameters: a new state


def test_failing_setup_fails_the_shard_and_is_retried(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"a.txt": b"a"})
    spec = make_spec(job_ref, tmp_path, entries, fail_setup=True)
    for _ in range(2):  # not cached: the second call runs the setup again
        with pytest.raises(JobSetupError, match=r"setup failed on .*RuntimeError: setup exploded"):
            run_shard(spec)
    work = tmp_path / "work"
    assert not work.exists() or list(work.iterdir()) == []


def test_tmp_dir_is_private_and_removed(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    spec = make_spec(job_ref, tmp_path, entries, index=5)
    result = run_shard(spec)
    contents = dict(tar_members(result.tar_path))
    tmp_dirs = {json.loads(contents[f"{k}%2Etxt.meta.json"])["tmp_dir"] for k in "ab"}
    assert len(tmp_dirs) == 1
    tmp_dir = Path(tmp_dirs.pop())
    work = Path(spec.work_dir).resolve()
    assert tmp_dir.resolve().is_relative_to(work)
    assert tmp_dir.resolve() != work
    assert not tmp_dir.exists()


def test_all_declined_gives_a_valid_empty_tar(job_ref: JobRef, tmp_path: Path) -> None:
    entries = make_tree(tmp_path / "src", {"decline.txt": b"", "skip.txt": b"", "empty.txt": b""})
    result = run_shard(make_spec(job_ref, tmp_path, entries))
    assert [r.status for r in result.results] == [Status.SKIPPED, Status.SKIPPED, Status.OK]
    assert tar_members(result.tar_path) == []
    assert result.member_count == 0
    assert result.sha256 == hashlib.sha256(Path(result.tar_path).read_bytes()).hexdigest()


def test_no_entries_gives_a_valid_empty_tar(job_ref: JobRef, tmp_path: Path) -> None:
    result = run_shard(make_spec(job_ref, tmp_path, []))
    assert result.results == ()
    assert tar_members(result.tar_path) == []


def test_undecodable_names_are_escaped_and_reasons_are_utf8(
    job_ref: JobRef, tmp_path: Path
) -> None:
    ok_name = os.fsdecode(b"caf\xe9.txt")
    boom_name = os.fsdecode(b"boom\xff.txt")
    entries = make_tree(tmp_path / "src", {ok_name: b"ok", boom_name: b"x"})
    result = run_shard(make_spec(job_ref, tmp_path, entries))
    ok, boom = result.results
    assert ok.status is Status.OK
    assert ok.members == ("caf%E9%2Etxt.json", "caf%E9%2Etxt.meta.json", "caf%E9%2Etxt.txt")
    assert boom.status is Status.FAILED
    assert boom.error is not None
    boom.error.encode("utf-8")  # a lone surrogate would break the Parquet results
    assert boom.error == "ValueError: cannot handle boom\\udcff.txt"
    assert boom.path == boom_name
    write_results(tmp_path / "results.parquet", result.results)
    members = dict(tar_members(result.tar_path))
    assert list(members) == list(ok.members)
    assert json.loads(members["caf%E9%2Etxt.meta.json"])["name"] == ok_name  # \\udce9 escape
    record = json.loads(members["caf%E9%2Etxt.json"])
    assert record["path"] == "caf\\xe9.txt"  # valid UTF-8, as in the manifest's path
    assert os.fsdecode(base64.b64decode(record["path_b64"])) == ok_name
    assert members["caf%E9%2Etxt.txt"] == b"OK"


def test_reason_is_one_line() -> None:
    assert failures.reason(ValueError("a\r\nb\tc  ")) == "ValueError: a b c"
    assert failures.reason(KeyError()) == "KeyError"
    assert failures.reason(OSError(5, "I/O error")) == "OSError: [Errno 5] I/O error"


def test_reason_names_the_file_instead_of_its_buffer() -> None:
    exc = OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9e50>")
    assert failures.reason(exc, "a/b.jpg") == "OSError: cannot identify image file 'a/b.jpg'"
    assert "BytesIO" in failures.reason(exc)  # without the file, the message is left alone


def test_job_file_is_loaded_from_its_text(job_ref: JobRef, tmp_path: Path) -> None:
    """Workers need the job's text only, not the file."""
    moved = JobRef(filename="/nowhere/upper_job.py", source=job_ref.source, digest="0" * 64)
    entries = make_tree(tmp_path / "src", {"a.txt": b"a"})
    spec = make_spec(job_ref, tmp_path, entries)
    result = run_shard(
        ShardSpec(
            spec.index,
            moved,
            spec.params_json,
            spec.source_root,
            spec.work_dir,
            spec.tar_name,
            spec.entries,
        )
    )
    assert result.files_ok == 1


JOB_DECLINING = textwrap.dedent(
    """
    from mountproc import Job

    job = Job(name="declines")

    @job.transform
    def transform(src, ctx):
        return None
    """
)


def test_job_without_setup_and_params(tmp_path: Path) -> None:
    path = tmp_path / "declining.py"
    path.write_text(JOB_DECLINING)
    ref = read_job_file(path)
    entries = make_tree(tmp_path / "src", {"a": b"", "b/c": b""})
    spec = ShardSpec(
        0, ref, "{}", str(tmp_path / "src"), str(tmp_path / "w"), "d.tar", tuple(entries)
    )
    result = run_shard(spec)
    assert {r.status for r in result.results} == {Status.SKIPPED}
    assert tar_members(result.tar_path) == []


# --- sick mounts, full disks, condemned files --------------------------------------------------

JOB_SICK = '''
"""A test job whose files fail the way a sick mount or a full disk makes them fail."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mountproc import Context, Job, SourceFile


class Params(BaseModel):
    calls_dir: str


job = Job(name="sick-text", params=Params)


@job.transform
def transform(src: SourceFile, ctx: Context[Params]) -> Any:
    calls = Path(ctx.params.calls_dir) / src.relpath
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    if src.relpath == "stale.txt" and n <= 2:
        raise OSError(errno.ESTALE, "Stale file handle", str(src.path))
    if src.relpath == "eio.txt":
        raise OSError(errno.EIO, "I/O error")
    if src.relpath == "full.txt":
        (ctx.tmp_dir / "big.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    return {"txt": src.read_bytes().upper()}
'''


@pytest.fixture(scope="module")
def sick_ref(tmp_path_factory: pytest.TempPathFactory) -> JobRef:
    path = tmp_path_factory.mktemp("job") / "sick_job.py"
    path.write_text(JOB_SICK)
    return read_job_file(path)


def sick_spec(
    ref: JobRef, tmp_path: Path, files: dict[str, bytes], check: WorkerCheck | None = None
) -> ShardSpec:
    """A shard of ``files`` (written under tmp_path/src); calls are counted in tmp_path/calls."""
    entries = make_tree(tmp_path / "src", files)
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    params_json = json.dumps({"calls_dir": str(calls)})
    return ShardSpec(
        2,
        ref,
        params_json,
        str(tmp_path / "src"),
        str(tmp_path / "work"),
        "sick-000002.tar",
        tuple(entries),
        check,
    )


def calls(tmp_path: Path) -> dict[str, int]:
    """How many times the transform ran on each file."""
    return {p.name: int(p.read_text()) for p in (tmp_path / "calls").iterdir()}


def test_stale_handle_is_retried_until_it_reads(sick_ref: JobRef, tmp_path: Path) -> None:
    """ESTALE twice, then a good read: the file is OK after the third attempt."""
    spec = sick_spec(sick_ref, tmp_path, {"a.txt": b"a", "stale.txt": b"s"})
    result = run_shard(spec)
    assert [(r.status, r.error) for r in result.results] == [(Status.OK, None)] * 2
    assert calls(tmp_path) == {"a.txt": 1, "stale.txt": 3}
    assert dict(tar_members(result.tar_path))["stale%2Etxt.txt"] == b"S"


def test_eio_on_a_live_source_fails_the_file_after_the_retries(
    sick_ref: JobRef, tmp_path: Path
) -> None:
    """EIO on every attempt while the source answers probes: that file fails, the rest go on."""
    spec = sick_spec(sick_ref, tmp_path, {"a.txt": b"a", "eio.txt": b"e", "z.txt": b"z"})
    result = run_shard(spec)
    got = by_path(result)
    assert got["eio.txt"].status is Status.FAILED
    assert got["eio.txt"].error == (
        "OSError: [Errno 5] I/O error (still EIO: I/O error after 3 attempts)"
    )
    assert (got["a.txt"].status, got["z.txt"].status) == (Status.OK, Status.OK)
    assert calls(tmp_path) == {"a.txt": 1, "eio.txt": _worker.READ_ATTEMPTS, "z.txt": 1}
    assert _worker.READ_ATTEMPTS == 3


def test_disk_full_ends_the_shard_without_a_partial_tar(sick_ref: JobRef, tmp_path: Path) -> None:
    """ENOSPC from a transform is DiskFullError; the partial tar and tmp dir are removed."""
    spec = sick_spec(sick_ref, tmp_path, {"a.txt": b"a", "full.txt": b"f", "z.txt": b"z"})
    with pytest.raises(DiskFullError, match=r"scratch directory .* is full \(ENOSPC: No space"):
        run_shard(spec)
    assert calls(tmp_path) == {"a.txt": 1, "full.txt": 1}  # not retried, and the shard stopped
    assert list(Path(spec.work_dir).iterdir()) == []  # no .partial tar, no tmp dir, no notes


def _worker_check(tmp_path: Path, token: str) -> WorkerCheck:
    """A check built as the driver does, over tmp_path/src, with a token file holding 'right'."""
    token_path = tmp_path / "work" / ".mountproc-token"
    token_path.parent.mkdir(parents=True, exist_ok=True)
    token_path.write_text("right")
    report, _ = check_source(tmp_path / "src", strict=False, allow_writable=True)
    return WorkerCheck(str(tmp_path / "src"), report.view(), str(token_path), token, 5.0)


def test_a_worker_with_its_own_scratch_says_so(sick_ref: JobRef, tmp_path: Path) -> None:
    """A worker that does not see the driver's token builds the tar in a scratch of its own
    and marks the result, so that the driver copies the tar over."""
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    check = _worker_check(tmp_path, f"wrong-{uuid.uuid4().hex}")
    spec = sick_spec(sick_ref, tmp_path, {"a.txt": b"a"}, check)
    result = run_shard(spec)
    assert result.scratch_shared is False
    assert result.files_ok == 1
    assert Path(result.tar_path) == Path(spec.work_dir) / spec.tar_name
    assert Path(result.tar_path).is_file()


def test_worker_is_checked_once_per_run(sick_ref: JobRef, tmp_path: Path) -> None:
    """A worker that passed the check for a run does not check again for its next shard."""
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    token = f"right-{uuid.uuid4().hex}"
    check = _worker_check(tmp_path, token)
    Path(check.token_path).write_text(token)
    spec = sick_spec(sick_ref, tmp_path, {"a.txt": b"a"}, check)
    assert run_shard(spec).scratch_shared is True
    Path(check.token_path).unlink()  # a second check would now find scratch not shared
    Path(spec.work_dir, spec.tar_name).unlink()
    assert run_shard(spec).scratch_shared is True
    assert calls(tmp_path) == {"a.txt": 2}


def test_condemned_files_fail_without_running(sick_ref: JobRef, tmp_path: Path) -> None:
    """Files condemned by earlier attempts fail with their reason; the transform skips them."""
    spec = sick_spec(sick_ref, tmp_path, {"a.txt": b"a", "slow.txt": b"s", "z.txt": b"z"})
    Path(spec.work_dir).mkdir()
    reason = "took longer than --file-timeout=1s; the worker process was restarted to stop it"
    ShardNotes(Path(spec.work_dir), spec.index).condemn(1, reason)
    result = run_shard(spec)
    assert [(r.path, r.status, r.error) for r in result.results] == [
        ("a.txt", Status.OK, None),
        ("slow.txt", Status.FAILED, reason),
        ("z.txt", Status.OK, None),
    ]
    assert calls(tmp_path) == {"a.txt": 1, "z.txt": 1}
    names = ["a%2Etxt.json", "a%2Etxt.txt", "z%2Etxt.json", "z%2Etxt.txt"]
    assert [n for n, _ in tar_members(result.tar_path)] == names
    assert sorted(p.name for p in Path(spec.work_dir).iterdir()) == [spec.tar_name]  # notes gone
