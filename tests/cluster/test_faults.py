"""Faults inside a worker, for real: a transform that hangs on one file, and one that kills its
worker process on one file. The run must end, publish every other file, and name the culprit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import RESIZE_JOB, clean_env, read_manifest, run_cli, tar_digests
from helpers.netfs import wait_until

pytestmark = pytest.mark.cluster

FILES = 12


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"{i:02d}.txt").write_text(f"file {i}\n")
    return src


def _job(tmp_path: Path, on_culprit: str) -> Path:
    """A job that copies text files, and does ``on_culprit`` on 05.txt."""
    job = tmp_path / "faulty.py"
    job.write_text(
        "import os, time\n"
        "from mountproc import Job\n"
        "job = Job(name='faulty')\n"
        "@job.transform\n"
        "def copy(src, ctx):\n"
        "    if src.relpath == '05.txt':\n"
        f"        {on_culprit}\n"
        "    return {'txt': src.read_bytes()}\n"
    )
    return job


def _run(tmp_path: Path, job: Path, *extra: str) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = run_cli(
        "run", job, "--source", _tree(tmp_path), "--outputs", tmp_path / "out",
        "--workers", "1", "--shard-max-files", "4", "--max-failures", "1", *extra,
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    return proc.returncode, proc.stderr, time.monotonic() - start


def _statuses(out: Path) -> dict[str, tuple[str, str | None]]:
    return {r["path"]: (r["status"], r["error"]) for r in read_manifest(out, "faulty")}


def test_a_transform_that_hangs_on_one_file_fails_that_file_within_the_limit(
    tmp_path: Path,
) -> None:
    code, stderr, took = _run(tmp_path, _job(tmp_path, "time.sleep(3600)"), "--file-timeout", "3")
    assert code == 0, stderr
    statuses = _statuses(tmp_path / "out")
    status, error = statuses.pop("05.txt")
    assert status == "failed"
    assert "took longer than --file-timeout=3s" in (error or "")
    assert {s for s, _ in statuses.values()} == {"ok"}
    assert len(statuses) == FILES - 1
    assert len(list((tmp_path / "out").glob("*.tar"))) == 3
    assert took < 120


def test_a_file_that_kills_its_worker_is_failed_and_the_rest_is_published(
    tmp_path: Path,
) -> None:
    code, stderr, _ = _run(tmp_path, _job(tmp_path, "os._exit(3)"))
    assert code == 0, stderr
    statuses = _statuses(tmp_path / "out")
    status, error = statuses.pop("05.txt")
    assert status == "failed"
    assert "worker process died 2 times while processing this file" in (error or "")
    assert {s for s, _ in statuses.values()} == {"ok"}
    assert len(list((tmp_path / "out").glob("*.tar"))) == 3


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (scanning /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _dask_workers(pid: int) -> list[int]:
    """The local Dask worker processes of a ``mountproc run``: forked by multiprocessing's fork
    server (a process with the server's command line whose parent is the server), or spawned."""
    out = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            stat = Path(f"/proc/{child}/stat").read_text()
            parent = Path(f"/proc/{stat.rsplit(')', 1)[1].split()[1]}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline or (FORKSERVER in cmdline and FORKSERVER in parent):
            out.append(child)
    return out


FORKSERVER = b"multiprocessing.forkserver"


def test_a_worker_killed_mid_run_is_replaced_and_the_tars_are_identical(tmp_path: Path) -> None:
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=48)
    args = ["--source", str(src), "--shard-max-files", "4", "--workers", "2"]
    clean = run_cli("run", RESIZE_JOB, *args, "--outputs", tmp_path / "clean", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mountproc", "run", str(RESIZE_JOB), *args, "--outputs", str(out)]
    with (tmp_path / "run.err").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stderr=err)
    try:
        wait_until(lambda: proc.poll() is not None or any(out.glob("*.tar")), 120, "the first tar")
        workers = _dask_workers(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=180) == 0, (tmp_path / "run.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {r["status"] for r in read_manifest(out)} == {"ok"}
    assert tar_digests(out) == tar_digests(tmp_path / "clean")


def test_files_that_change_or_vanish_after_the_listing_are_flagged(tmp_path: Path) -> None:
    """Another writer on the share: 03.txt grows while it is read, 07.txt is deleted before its
    turn. The first is ok but flagged as changed; the second fails as vanished."""
    job = tmp_path / "writer.py"
    job.write_text(
        "import os\n"
        "from mountproc import Job\n"
        "job = Job(name='faulty')\n"
        "@job.transform\n"
        "def copy(src, ctx):\n"
        "    data = src.read_bytes()\n"
        "    if src.relpath == '03.txt':\n"
        "        with open(src.path, 'ab') as f:\n"
        "            f.write(b'appended by another writer')\n"
        "        os.remove(src.path.with_name('07.txt'))\n"
        "    return {'txt': data}\n"
    )
    code, stderr, _ = _run(tmp_path, job, "--shard-max-files", "20")
    assert code == 0, stderr
    rows = {r["path"]: r for r in read_manifest(tmp_path / "out", "faulty")}
    assert (rows["03.txt"]["status"], rows["03.txt"]["changed"]) == ("ok", True)
    assert rows["07.txt"]["status"] == "failed"
    assert "FileNotFoundError" in rows["07.txt"]["error"]
    assert [p for p, r in rows.items() if r["changed"]] == ["03.txt"]
