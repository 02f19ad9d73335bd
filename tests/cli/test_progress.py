"""Progress and the end-of-run table: JSON metric lines when stdout is not a terminal (Valohai's
log), a live status line in a terminal, and the summary table either way."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import RESIZE_JOB, clean_env, run_cli

from mountproc._cli.progress import Progress, status_line, summary_table
from mountproc._demo_data import make_demo_tree

KEYS = {
    "files_done", "files_total", "files_ok", "files_failed", "files_skipped", "shards_done",
    "shards_total", "files_per_s", "eta_s", "elapsed_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("progress") / "src"
    make_demo_tree(src, count=24, bad=True)
    return src


def _summary(outputs: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((outputs / "resize-images-summary.json").read_text())
    return data


def test_json_metric_lines_when_stdout_is_not_a_terminal(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", RESIZE_JOB, "--source", tree, "--outputs", out, "--shard-max-files",
                   "5", "--max-failures", "100%", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    metrics = [o for o in objects if "files_done" in o]
    assert len(metrics) >= 2  # the starting point and the end, at least
    for m in metrics:
        assert set(m) == KEYS
    done = [m["files_done"] for m in metrics]
    assert done == sorted(done)
    summary = _summary(out)
    first, last = metrics[0], metrics[-1]
    assert (first["files_done"], first["shards_done"]) == (0, 0)
    assert last["shards_done"] == last["shards_total"] == summary["shards"]
    assert last["files_done"] == last["files_total"] == summary["files_selected"]
    assert last["files_failed"] == summary["files_failed"] > 0  # the tree has bad files
    assert last["eta_s"] == 0
    final = objects[-1]  # the summary's metrics, for Valohai's charts
    assert final["files_ok"] == summary["files_ok"]
    # skipped means one thing: the progress lines, the last metrics and the summary agree
    assert last["files_skipped"] == final["files_skipped"] == summary["files_skipped"]
    # the table, after the metric lines: the run, then its commonest failures and where more is
    lines = proc.stdout.splitlines()
    table = lines[lines.index("job         resize-images") :]
    assert table[2].startswith(
        f"files       {summary['files_ok']} ok, {summary['files_failed']} failed"
    )
    assert table[6] == "dataset     dataset://preprocessed-images/v1"
    groups = summary["failures"]
    assert sum(g["files"] for g in groups) == summary["files_failed"]
    assert table[7] == (
        f"failures    {groups[0]['files']} x {groups[0]['error']} (e.g. {groups[0]['example']})"
    )
    assert table[-1].startswith(f"details     mountproc report {out}")


def _in_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return its exit code and output."""
    leader, follower = pty.openpty()
    cmd = [sys.executable, "-m", "mountproc", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=240), b"".join(chunks).decode("utf-8", "replace")


def test_live_status_line_in_a_terminal(tmp_path: Path, tree: Path) -> None:
    code, text = _in_terminal(
        ["run", str(RESIZE_JOB), "--source", str(tree), "--outputs", str(tmp_path / "out"),
         "--shard-max-files", "5", "--max-failures", "100%", "--test-mode", "--test-size", "5"],
        tmp_path,
    )  # fmt: skip
    assert code == 0, text
    assert '{"' not in text  # no JSON lines for a person at a terminal
    assert "\r0/5 files (0%) | 0/" in text
    assert "\r5/5 files (100%) | " in text
    assert "files/s | ETA " in text
    assert "dataset     none (test mode)" in text


def test_rate_and_eta_from_the_files_of_this_run() -> None:
    """Files an earlier run finished (the first event's count) do not inflate the rate."""
    progress = Progress(live=False)
    start = {"files_done": 100, "files_total": 400, "files_failed": 0,
             "shards_done": 1, "shards_total": 4}  # fmt: skip
    progress(start)
    assert progress._start is not None
    t0 = progress._start[0]
    figures = progress.figures({**start, "files_done": 200, "shards_done": 2}, t0 + 10.0)
    assert figures["files_per_s"] == 10.0  # 100 files of this run in 10 s
    assert figures["eta_s"] == 20.0  # 200 files left
    assert figures["elapsed_s"] == 10.0


def test_status_line_shows_hours_for_long_runs() -> None:
    line = status_line({"files_done": 1_500, "files_total": 1_000_000, "files_failed": 3,
                        "shards_done": 1, "shards_total": 1000, "files_per_s": 100.0,
                        "eta_s": 9985.0})  # fmt: skip
    assert line == (
        "1,500/1,000,000 files (0%) | 1/1000 shards | 3 failed | 100.0 files/s | ETA 2:46:25"
    )


@pytest.mark.parametrize(
    ("changes", "dataset"),
    [
        ({}, "dataset://d/v1"),
        ({"dataset": None, "test_mode": True}, "none (test mode)"),
        ({"dataset": None, "within_budget": False}, "none (the run is not within its failure"),
        ({"dataset": None}, "none (no --dataset)"),
    ],
)
def test_summary_table_says_why_no_dataset(changes: dict[str, object], dataset: str) -> None:
    summary: dict[str, object] = {
        "job": "j", "source": "/s", "files_ok": 1, "files_failed": 0, "files_skipped": 0,
        "files_selected": 1, "entries_listed": 1, "files_excluded": 0, "shards_published": 1,
        "shards_failed": 0,
        "shards_reused": 0, "seconds": 1.0, "files_per_s": 1.0, "dataset": "dataset://d/v1",
        "test_mode": False, "within_budget": True, **changes,
    }  # fmt: skip
    rows = summary_table(summary, Path("/out"))
    assert rows[-1].startswith(f"dataset     {dataset}")
    assert rows[5] == "outputs     /out (1 tar)"
