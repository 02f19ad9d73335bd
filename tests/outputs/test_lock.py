"""One run at a time per job and outputs directory: a second run exits 2 at once naming the
holder; a run that died leaves no lock behind, and the next run says it took over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_env, run_cli, slow_job
from helpers.netfs import wait_until

pytestmark = pytest.mark.cluster

SLOW_JOB = slow_job(0.5)


def _tree(root: Path) -> Path:
    for i in range(20):
        (root / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 2}" / f"f{i:02d}.txt").write_text(str(i))
    return root


def _lock(tmp_path: Path) -> Path:
    return tmp_path / ".mountproc-lock-out-slow"


def _start(tmp_path: Path, job: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "mountproc", "run", str(job), "--source", str(tmp_path / "src"),
           "--outputs", str(tmp_path / "out"), "--workers", "1"]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def test_a_second_run_exits_2_at_once_naming_the_holder(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    job = tmp_path / "slow.py"
    job.write_text(SLOW_JOB)
    first = _start(tmp_path, job)
    try:
        wait_until(lambda: _lock(tmp_path).is_file() and _lock(tmp_path).stat().st_size > 0,
                   60, "the first run holds the lock")  # fmt: skip
        started = time.monotonic()
        second = run_cli("run", job, "--source", tmp_path / "src", "--outputs",
                         tmp_path / "out", cwd=tmp_path)  # fmt: skip
        took = time.monotonic() - started
        assert second.returncode == 2, second.stderr
        assert took < 5
        holder = json.loads(_lock(tmp_path).read_text())
        assert holder["pid"] == first.pid
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith(
            f"mountproc: error: another run of job slow into {tmp_path / 'out'}"
        )
        assert f"pid {first.pid}, since {holder['since']}" in error
        assert first.poll() is None  # the first run goes on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    # a holder that died: its lock went with it; the next run takes over and says so
    third = run_cli("run", job, "--source", tmp_path / "src", "--outputs", tmp_path / "out",
                    "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock of a run of job slow into {tmp_path / 'out'}" in third.stderr
    assert f"pid {first.pid}" in third.stderr
    assert not _lock(tmp_path).exists()  # released at the end


def test_the_lock_is_never_inside_outputs(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    job = tmp_path / "slow.py"
    job.write_text(slow_job(0))
    proc = run_cli("run", job, "--source", tmp_path / "src", "--outputs", tmp_path / "out",
                   "--test-mode", "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if "lock" in p.name]
