"""Ctrl-C and SIGTERM mid-run: exit 130 / 143, only complete tars published, a manifest left."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_env, read_manifest, slow_job

pytestmark = pytest.mark.cluster

SLOW_JOB = slow_job(0.3, include=("*.txt",))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_stops_cleanly(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(20):
            (src / f"d{d}" / f"{i:02d}.txt").write_text(f"{d}-{i}")
    job = tmp_path / "slow_job.py"
    job.write_text(SLOW_JOB)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mountproc",
        "run",
        str(job),
        "--source",
        str(src),
        "--outputs",
        str(out),
        "--shard-max-files",
        "4",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("slow-*.tar")):  # wait until the first shard is published
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no tar was published within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stderr
    assert time.monotonic() - sent < 30
    assert "Traceback" not in stderr
    assert "Traceback" not in stdout
    # the summary table is still printed, saying which signal stopped the run
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert f"\nstopped by  interrupted ({name})" in stdout
    summary = json.loads((out / "slow-summary.json").read_text())
    assert summary["stopped_by"] == f"interrupted ({name})"
    tars = sorted(p.name for p in out.glob("slow-*.tar"))
    assert 1 <= len(tars) < 20
    assert not [p for p in out.iterdir() if p.name.endswith((".partial", ".tmp"))]
    rows = read_manifest(out, "slow")
    assert len(rows) == 80
    published = {r["tar"] for r in rows if r["status"] == "ok"}
    assert published == set(tars)
    assert {r["status"] for r in rows if r["tar"] is None} == {"failed"}
    # the same command again resumes: only the unfinished shards run, and all 20 tars are there
    rerun = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(tars)} shard(s) already published and verified" in rerun.stderr
    assert len(list(out.glob("slow-*.tar"))) == 20
    assert {r["status"] for r in read_manifest(out, "slow")} == {"ok"}
