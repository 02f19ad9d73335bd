"""The benchmark harness (``python -m benchmarks``): a smoke run measures every comparison on
tiny data, both sides of each produce the same samples, and the report says what it found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, clean_env
from helpers.netfs import sshfs_available

if str(REPO) not in sys.path:  # the benchmarks package lives beside mountproc, not in it
    sys.path.insert(0, str(REPO))

from benchmarks import report
from benchmarks.common import Comparison, Config, at_most, run_quiet, same_samples

SSHFS = "framework overhead, sshfs on 127.0.0.1"
RAY = "against Ray Data, local disk"  # a smoke run installs no Ray: skipped
LATENCY = "end to end, sshfs with 0.5 ms latency each way"
HIDDEN = "latency hidden, sshfs with 0.5 ms latency each way vs none"
MINE = {
    "end to end, local disk": "every file processed",
    "framework overhead, local disk": "same samples",
    "framework overhead, local disk, 10x the JPEGs": "same samples",
    SSHFS: "same samples",
    LATENCY: "same samples",
    HIDDEN: "same samples",
    "against dask.bag, local disk": "same samples",
    "start-up, one camera JPEG": "same samples",
    "packing, small files": "same members",
    "packing, large files": "same members",
}


@pytest.mark.slow
@pytest.mark.cluster
def test_smoke_run_measures_every_comparison(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks", "--smoke", "--work", str(tmp_path)]
    proc = run_harness(cmd, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    data = json.loads((tmp_path / "report.json").read_text())
    rows = {r["name"]: r for r in data["comparisons"]}
    assert {*MINE, RAY} <= set(rows), sorted(rows)
    assert data["errors"] == {}
    for name, row in rows.items():
        if "sshfs" in name and sshfs_available() is not None:
            assert row["skipped"], "sshfs is not available here: the row says why"
            continue
        if name == RAY:
            assert row["skipped"].startswith("smoke run"), row
            continue
        assert not row["skipped"], name
        assert not row["error"], (name, row["error"])
        assert len(row["baseline_s"]) == len(row["ours_s"]) == 2, name
        assert min(row["baseline_s"] + row["ours_s"]) > 0, name
        assert row["ratio"] > 0, name
        assert all(row["checks"].values()), (name, row["checks"], row["note"])
        assert f"| {name} |" in proc.stdout
        if name in MINE:
            assert row["checks"][MINE[name]] is True, name
    assert data["machine"]["cores"] > 0
    assert data["machine"]["cpu"]


def run_harness(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the harness; past ``timeout``, SIGTERM it so that it unmounts and stops its runs."""
    with subprocess.Popen(
        cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"the smoke run took over {timeout} s:\n{out}\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_samples_that_differ_are_named() -> None:
    base = {"a%2Ejpg.jpg": "1", "a%2Ejpg.json": "2", "b%2Ejpg.jpg": "3"}
    ours = {"a%2Ejpg.jpg": "1", "a%2Ejpg.json": "9", "c%2Ejpg.jpg": "3"}
    equal, text = same_samples(base, ours)
    assert not equal
    assert "only in the baseline's tars (e.g. b%2Ejpg.jpg)" in text
    assert "only in ours (e.g. c%2Ejpg.jpg)" in text
    assert "with different bytes (e.g. a%2Ejpg.json)" in text
    assert same_samples(base, dict(base)) == (True, "same 3 members (name and bytes) on both sides")


def test_report_says_missed_and_failed_checks_plainly(tmp_path: Path) -> None:
    slow = Comparison("x", "base", "ours", [1.0, 1.2, 5.0], [2.0, 2.2, 2.1], "<= 1.08")
    slow.check = at_most(1.08)
    slow.checks["same samples"] = False
    fast = Comparison("y", "base", "ours", [4.0, 4.0], [1.0, 1.0], "<= 0.333", at_most(0.333))
    skipped = Comparison("z", "base", "ours", skipped="sshfs needs root")
    hung = Comparison("h", "base", "ours", [3.0], [], "<= 1", at_most(1.0), error="it hung")
    data = report.build([slow, fast, skipped, hung], Config(tmp_path), {}, "shared machine")
    table = report.markdown(data)
    missed = "| x | base | 1.20 s | ours | 2.10 s | 1.750 | <= 1.08 | MISSED; CHECK FAILED: same"
    assert missed in table
    assert "| y | base | 4.00 s | ours | 1.00 s | 0.250 | <= 0.333 | met |" in table
    assert "| z | base | - | ours | - | - | - | skipped: sshfs needs root |" in table
    assert "| h | base | - | ours | - | - | <= 1 | ERROR (see below) |" in table
    assert "- h: ERROR it hung" in table
    assert "shared machine" in table
    saved = json.loads(report.write(data, tmp_path).read_text())
    assert [r["met"] for r in saved["comparisons"]] == [False, True, None, None]


def test_a_hung_run_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n"
    )
    with pytest.raises(RuntimeError, match="did not finish in 3 s"):
        run_quiet([sys.executable, "-c", script], timeout=3)
    grandchild = int(pid_file.read_text())
    assert stat_state(grandchild) in ("", "Z"), "the run's child outlived it"


def stat_state(pid: int) -> str:
    """The state letter of a process (``Z`` for a zombie), or "" once it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    return data[data.rindex(")") + 2]
