"""How far reads run ahead: a byte budget bounds them, and on a network mount a worker keeps
several files in flight (one on a local disk)."""

from __future__ import annotations

import tarfile
import threading
from pathlib import Path

import pytest
from helpers.netfs import SshfsMount, sshfs_available, wait_until

from mountproc._jobfile import read_job_file
from mountproc._mounts.source import check_source
from mountproc._records import FileEntry, ShardSpec, Status, WorkerCheck
from mountproc._shard import worker as _worker
from mountproc._shard.reading import ReadAhead, SourceRead, read_source
from mountproc._shard.worker import run_shard

WAIT_S = 10.0
READER = "mountproc-read"


def _gated_reads(
    tmp_path: Path, count: int
) -> tuple[list[Path], list[str], threading.Event, threading.Condition]:
    """``count`` files, a log of the reads started and a gate that holds every read."""
    paths = [tmp_path / f"{i}.bin" for i in range(count)]
    for p in paths:
        p.write_bytes(p.name.encode())
    return paths, [], threading.Event(), threading.Condition()


def test_reads_ahead_stop_at_the_byte_budget(tmp_path: Path) -> None:
    paths, started, gate, changed = _gated_reads(tmp_path, 8)

    def read(path: Path) -> SourceRead:
        with changed:
            started.append(path.name)
            changed.notify_all()
        gate.wait(WAIT_S)
        return read_source(path)

    # up to 6 ahead, but 100 bytes each against a budget of 250: three in the air at most
    reads = ReadAhead(paths, read, ahead=6, threads=6, sizes=[100] * 8, budget=250)
    it = iter(reads)
    first = next(it)
    with changed:
        assert changed.wait_for(lambda: len(started) >= 3, WAIT_S), started
        # without the budget, six would be in the air within moments (six threads are free)
        assert not changed.wait_for(lambda: len(started) > 3, 0.5), started
    gate.set()
    assert first.result(timeout=WAIT_S).data == b"0.bin"
    assert [f.result(timeout=WAIT_S).data for f in it] == [f"{i}.bin".encode() for i in range(1, 8)]
    reads.close()


def test_a_file_bigger_than_the_budget_is_still_read(tmp_path: Path) -> None:
    paths, _, _, _ = _gated_reads(tmp_path, 3)
    reads = ReadAhead(paths, read_source, ahead=4, threads=2, sizes=[10**9] * 3, budget=10)
    assert [f.result(timeout=WAIT_S).data for f in reads] == [b"0.bin", b"1.bin", b"2.bin"]
    reads.close()


REASON = sshfs_available()
JOB = """
import threading
from mountproc import Job

job = Job(name="readers")

@job.transform
def count_readers(src, ctx):
    readers = sum(t.name.startswith("mountproc-read") for t in threading.enumerate())
    return {"txt": str(readers)}
"""


def _spec(tmp_path: Path, source: Path, names: list[str]) -> ShardSpec:
    """A shard over ``source`` (``names`` in it), checked as the driver checks it."""
    job = tmp_path / "readers_job.py"
    job.write_text(JOB)
    work = tmp_path / f"work-{source.name}"
    work.mkdir()
    token = work / ".mountproc-token"
    token.write_text("t")
    report, _ = check_source(source, strict=False, allow_writable=True)
    check = WorkerCheck(str(source), report.view(), str(token), "t", 5.0)
    entries = []
    for name in names:
        st = (source / name).stat()
        entries.append(FileEntry(name, st.st_size, st.st_mtime_ns))
    return ShardSpec(
        0, read_job_file(job), "{}", str(source), str(work), "r.tar", tuple(entries), check
    )


def _readers_seen(spec: ShardSpec) -> int:
    """The most reader threads the transform saw at once over the shard."""
    # the threads of an earlier shard end soon after it: wait, so that only this one's count
    wait_until(lambda: not any(t.name.startswith(READER) for t in threading.enumerate()),
               WAIT_S, "no reader thread of an earlier shard was left")  # fmt: skip
    result = run_shard(spec)
    assert {r.status for r in result.results} == {Status.OK}
    with tarfile.open(result.tar_path) as tar:
        counts = [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".txt")]  # type: ignore[union-attr]
    return max(counts)


@pytest.mark.mount
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_a_network_mount_has_several_files_in_flight(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    names = [f"{i:02d}.txt" for i in range(20)]
    for name in names:
        (export / name).write_text(name)
    assert _readers_seen(_spec(tmp_path, export, names)) == 1  # a local disk: one ahead
    with SshfsMount.start(export, tmp_path / "mnt", tmp_path / "sshfs") as mount:
        seen = _readers_seen(_spec(tmp_path, mount.mountpoint, names))
    assert seen == _worker.MOUNT_THREADS > 1
