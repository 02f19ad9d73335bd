"""Real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 for tests, stopped by
the tests that start them (by PID)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import clean_env
from helpers.netfs import wait_until

DASK = [sys.executable, "-m", "dask"]  # the `dask` command of this interpreter


def start(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=cwd, env=clean_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_scheduler(
    cwd: Path, procs: list[subprocess.Popen[bytes]], extra: tuple[str, ...] = ()
) -> str:
    """Start ``dask scheduler`` on 127.0.0.1 and a free port; return its address."""
    sched_file = cwd / "scheduler.json"
    cmd = [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", *extra]
    procs.append(start([*cmd, "--scheduler-file", str(sched_file)], cwd))
    wait_until(
        lambda: sched_file.exists() and "address" in sched_file.read_text(),
        30,
        "the scheduler address",
    )
    address: str = json.loads(sched_file.read_text())["address"]
    return address


def worker_cmd(address: str) -> list[str]:
    opts = ["--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
    return [*DASK, "worker", address, *opts]
