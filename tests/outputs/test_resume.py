"""Rerunning the same command resumes: finished shards are verified and reused, unfinished ones
are built again, and the outputs end byte-identical to a clean run's, each file listed once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import RESIZE_JOB, clean_env, read_manifest, read_metadata, run_cli, tar_digests
from helpers.netfs import wait_until

import mountproc
from mountproc._demo_data import make_demo_tree

pytestmark = pytest.mark.cluster

ARGS = ("--shard-max-files", "4", "--workers", "1")


def _args(src: Path, out: Path) -> list[str | Path]:
    return ["run", RESIZE_JOB, "--source", src, "--outputs", out, *ARGS]


def _summary(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "resize-images-summary.json").read_text())
    return data


@pytest.fixture
def clean(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A source tree of 24 images and the tars of one clean run over it."""
    src = tmp_path / "src"
    make_demo_tree(src, count=24)
    proc = run_cli(*_args(src, tmp_path / "clean"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return src, tar_digests(tmp_path / "clean")


def _assert_complete(out: Path, expected: dict[str, str]) -> None:
    """Outputs equal a clean run's; the metadata lists every tar once with its sha256."""
    assert tar_digests(out) == expected
    tars = [m for m in read_metadata(out) if m["file"].endswith(".tar")]
    assert sorted(m["file"] for m in tars) == sorted(expected)
    assert {m["file"]: m["metadata"]["sha256"] for m in tars} == expected
    assert {r["status"] for r in read_manifest(out)} == {"ok"}
    assert not [p for p in out.iterdir() if p.name.endswith((".partial", ".tmp"))]


def test_rerunning_a_finished_run_reuses_every_shard(
    tmp_path: Path, clean: tuple[Path, dict[str, str]]
) -> None:
    src, expected = clean
    out = tmp_path / "clean"
    proc = run_cli(*_args(src, out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "6 shard(s) already published and verified" in proc.stderr
    summary = _summary(out)
    assert summary["shards_reused"] == 6
    _assert_complete(out, expected)
    # the summary counts both attempts, and says when this one ran, with which mountproc
    assert summary["attempts"] == 2
    assert isinstance(summary["seconds"], float)
    assert isinstance(summary["seconds_all_attempts"], float)
    assert summary["seconds_all_attempts"] > summary["seconds"]
    started = datetime.fromisoformat(str(summary["started"]))
    ended = datetime.fromisoformat(str(summary["ended"]))
    assert started.tzinfo is not None
    assert timedelta(0) <= ended - started <= timedelta(seconds=float(summary["seconds"]) + 2)
    assert summary["mountproc"] == mountproc.__version__
    assert summary["job_digest"] == hashlib.sha256(RESIZE_JOB.read_bytes()).hexdigest()


def test_a_crash_between_publishing_a_tar_and_its_record_is_repaired(
    tmp_path: Path, clean: tuple[Path, dict[str, str]]
) -> None:
    """The on-disk state of that crash: tar 2 published, its record and results never written;
    tar 4 altered after publishing (a disk error): both are built again, to the same bytes."""
    src, expected = clean
    out = tmp_path / "clean"
    results = tmp_path / ".mountproc-scratch-clean" / "resize-images" / "results"
    (results / "shard-000002.json").unlink()
    (results / "shard-000002.parquet").unlink()
    altered = out / "resize-images-000004.tar"
    altered.chmod(0o644)
    with altered.open("r+b") as f:
        f.seek(600)
        f.write(b"garbage")
    proc = run_cli(*_args(src, out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 shard(s) already published and verified, 2 discarded" in proc.stderr
    _assert_complete(out, expected)


def test_killing_the_driver_mid_run_then_rerunning_completes_identically(
    tmp_path: Path, clean: tuple[Path, dict[str, str]]
) -> None:
    src, expected = clean
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mountproc", *map(str, _args(src, out))]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=clean_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: proc.poll() is not None or len(list(out.glob("*.tar"))) >= 2, 120, "2 tars"
        )
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:  # the machine dies: the driver and its local workers
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(list(out.glob("*.tar"))) < 6
    rerun = run_cli(*_args(src, out), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "already published and verified" in rerun.stderr
    _assert_complete(out, expected)


LISTING_JOB = """
from mountproc import Job
job = Job(name='copy')

@job.transform
def copy(src, ctx):
    return {'txt': src.read_bytes()}
"""


@pytest.mark.slow
def test_killing_the_driver_during_the_listing_then_rerunning_completes(tmp_path: Path) -> None:
    """60,000 files take long enough to list that the kill lands inside the crawl."""
    src = tmp_path / "src"
    for d in range(300):
        folder = src / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(200):
            (folder / f"{f:03d}.txt").write_bytes(b"%d" % f)
    job = tmp_path / "copy_job.py"
    job.write_text(LISTING_JOB)
    args = ["run", job, "--source", src, "--shard-max-files", "5000", "--workers", "2"]
    out = tmp_path / "out"
    state = tmp_path / ".mountproc-scratch-out" / "copy" / "run.json"
    cmd = [sys.executable, "-m", "mountproc", *map(str, args), "--outputs", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=clean_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: proc.poll() is not None or state.exists(), 60, "the crawl to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "listed" not in json.loads(state.read_text()), "the kill came after the listing"
    rerun = run_cli(*args, "--outputs", out, cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    clean = run_cli(*args, "--outputs", tmp_path / "clean", cwd=tmp_path, timeout=600)
    assert clean.returncode == 0, clean.stderr
    assert len(tar_digests(out)) == 12
    assert tar_digests(out) == tar_digests(tmp_path / "clean")
