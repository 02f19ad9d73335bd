"""Reading source files one ahead of the transform, and the sample record of what was read."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from mountproc._errors import JobFileError
from mountproc._jobfile import read_job_file
from mountproc._records import FileEntry, ShardSpec, Status
from mountproc._shard import reading as _reading
from mountproc._shard import sample
from mountproc._shard.reading import ReadAhead, SourceRead, read_source
from mountproc._shard.watchdog import ShardNotes
from mountproc._shard.worker import run_shard

WAIT_S = 10.0


def test_a_small_file_is_kept_in_memory_with_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"photo bytes" * 1000)
    read = read_source(path)
    stat = path.stat()
    assert read.data == path.read_bytes()
    assert read.sha256 == hashlib.sha256(read.data).hexdigest()
    assert (read.size, read.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert not read.changed_while_read


def test_a_big_file_is_hashed_as_it_streams_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reading, "INLINE_MAX", 1000)
    monkeypatch.setattr(_reading, "CHUNK", 333)
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(5000))
    read = read_source(path)
    assert read.data is None
    assert read.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read.size == 5000


def test_a_missing_file_raises_from_its_future(tmp_path: Path) -> None:
    reads = ReadAhead([tmp_path / "gone.jpg"], read_source)
    (future,) = list(reads)
    with pytest.raises(FileNotFoundError):
        future.result(timeout=WAIT_S)
    reads.close()


def test_the_record_names_the_source_and_what_was_read() -> None:
    read = SourceRead(b"x", "ab" * 32, 1, 1_700_000_000_123_456_789, False)
    name = os.fsdecode(b"caf\xe9/scan.jpg")
    record = json.loads(sample.record(name, read.size, read.mtime_ns, read.sha256))
    assert record == {
        "path": "caf\\xe9/scan.jpg",  # valid UTF-8: every loader reads it
        "path_b64": base64.b64encode(b"caf\xe9/scan.jpg").decode(),  # the exact bytes
        "size": 1,
        "mtime_ns": 1_700_000_000_123_456_789,
        "sha256": "ab" * 32,
    }


def test_reads_run_at_most_one_file_ahead(tmp_path: Path) -> None:
    """Nothing is read beyond the next file until the consumer takes the current one."""
    paths = [tmp_path / f"{i}.bin" for i in range(5)]
    for p in paths:
        p.write_bytes(p.name.encode())
    started: list[str] = []
    gate = threading.Event()
    lock = threading.Lock()

    def read(path: Path) -> SourceRead:
        with lock:
            started.append(path.name)
        gate.wait(WAIT_S)
        return read_source(path)

    reads = ReadAhead(paths, read)
    it = iter(reads)
    first = next(it)  # submits 0 and 1, hands out 0
    gate.set()
    assert first.result(timeout=WAIT_S).data == b"0.bin"
    second = next(it)
    assert second.result(timeout=WAIT_S).data == b"1.bin"
    assert started[:2] == ["0.bin", "1.bin"]
    assert len(started) <= 3  # 2 may have begun when the consumer took 1, not 3 or 4
    assert [f.result(timeout=WAIT_S).data for f in it] == [b"2.bin", b"3.bin", b"4.bin"]
    reads.close()


JOB = """
from mountproc import Job
job = Job(name="echo")

@job.transform
def echo(src, ctx):
    if src.relpath == "clash.txt":
        return {"json": {"mine": 1}}
    return {"txt": src.read_bytes(), "sum.txt": src.sha256}
"""


def _spec(tmp_path: Path, files: dict[str, bytes]) -> ShardSpec:
    job = tmp_path / "echo_job.py"
    job.write_text(JOB)
    src = tmp_path / "src"
    src.mkdir()
    entries = []
    for name, data in files.items():
        (src / name).write_bytes(data)
        st = (src / name).stat()
        entries.append(FileEntry(name, st.st_size, st.st_mtime_ns))
    work = tmp_path / "work"
    return ShardSpec(0, read_job_file(job), "{}", str(src), str(work), "t.tar", tuple(entries))


def test_the_transform_gets_the_bytes_read_and_their_checksum(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"a.txt": b"alpha", "b.txt": b"beta"})
    result = run_shard(spec)
    assert [r.status for r in result.results] == [Status.OK, Status.OK]
    with tarfile.open(result.tar_path) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    assert got["a%2Etxt.txt"] == b"alpha"
    assert got["a%2Etxt.sum.txt"] == hashlib.sha256(b"alpha").hexdigest().encode()
    assert json.loads(got["b%2Etxt.json"])["sha256"] == hashlib.sha256(b"beta").hexdigest()


def test_an_output_named_like_the_record_stops_the_run(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"a.txt": b"a", "clash.txt": b"c"})
    with pytest.raises(JobFileError, match=r"output named 'json'.*e\.g\. 'meta\.json'"):
        run_shard(spec)
    assert not (tmp_path / "work" / "t.tar").exists()


def test_a_condemned_file_is_never_opened(tmp_path: Path) -> None:
    """A FIFO would block its reader forever: condemned by an earlier attempt, it is not read
    ahead, so the files after it are processed."""
    spec = _spec(tmp_path, {"a.txt": b"a", "z.txt": b"z"})
    os.mkfifo(Path(spec.source_root) / "pipe.txt")
    entries = (spec.entries[0], FileEntry("pipe.txt", 0, 0), spec.entries[1])
    spec = ShardSpec(0, spec.job, "{}", spec.source_root, spec.work_dir, "t.tar", entries)
    Path(spec.work_dir).mkdir()
    ShardNotes(Path(spec.work_dir), 0).condemn(1, "hung before")
    result = run_shard(spec)
    assert [(r.status, r.error) for r in result.results] == [
        (Status.OK, None),
        (Status.FAILED, "hung before"),
        (Status.OK, None),
    ]
