"""Test mode on a 1,000,000-file tree: ``mountproc run --test-mode`` must not wait for a listing.

The baseline is what any listing-first test mode pays at least: ``find SRC -type f`` over the
whole tree. The target is absolute: the whole run (start, cluster, subset, 100 files, tars,
metadata) under 15 s, on local disk and over sshfs on 127.0.0.1.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    REPO,
    Comparison,
    Config,
    alternate,
    fresh_dir,
    run_quiet,
    sshfs_mount,
    sshfs_unavailable,
)
from benchmarks.trees import SMOKE, TREE_1M, ensure_tree

JOB = REPO / "benchmarks" / "jobs" / "copy_files.py"
LIMIT_S = 15.0
TEST_SIZE = 100


def run(cfg: Config) -> list[Comparison]:
    """Local disk, then sshfs (unless unavailable)."""
    spec = SMOKE if cfg.smoke else TREE_1M
    tree = ensure_tree(cfg.work, spec)
    out = [_compare(cfg, tree, f"test mode, {spec.files:,} files, local disk")]
    reason = sshfs_unavailable(cfg)
    if reason is None:
        with sshfs_mount(cfg, tree, "testmode") as mounted:
            out.append(_compare(cfg, mounted, f"test mode, {spec.files:,} files, sshfs"))
    else:
        out.append(_skipped(f"test mode, {spec.files:,} files, sshfs", reason))
    return out


def _compare(cfg: Config, source: Path, name: str) -> Comparison:
    cmp = Comparison(name, "find -type f (a full listing)", "mountproc run --test-mode")
    cmp.target = f"ours < {LIMIT_S:g} s (absolute)"
    cmp.check = lambda _ratio: statistics.median(cmp.ours_s) < LIMIT_S
    runs = cfg.work / "runs" / "testmode"
    alternate(cfg, cmp, lambda _i: lambda: _find(source), lambda i: _mountproc(source, runs, i))
    files = _check_outputs(runs)
    cmp.checks["every repeat processed the whole subset"] = files == TEST_SIZE
    cmp.note = (
        f"{files} files processed from a subset of {TEST_SIZE}; the run includes process start, "
        "a LocalCluster, tars and metadata; directories warm in the page cache after the first run"
    )
    return cmp


def _find(source: Path) -> None:
    subprocess.run(["find", str(source), "-type", "f"], stdout=subprocess.DEVNULL, check=True)


def _mountproc(source: Path, runs: Path, i: int) -> Callable[[], object]:
    work = fresh_dir(runs / f"r{i}")
    cmd = [
        sys.executable, "-m", "mountproc", "run", str(JOB), "--source", str(source),
        "--outputs", str(work / "out"), "--scratch", str(work / "scratch"),
        "--test-mode", "--test-size", str(TEST_SIZE),
    ]  # fmt: skip
    return lambda: run_quiet(cmd)


def _check_outputs(runs: Path) -> int:
    """Every repeat processed the same files: the size of the subset, all ok."""
    counts = set()
    for summary in sorted(runs.glob("r*/out/test-mode/copy-files-summary.json")):
        data = json.loads(summary.read_text())
        counts.add((int(data["files_ok"]), int(data["files_failed"])))
    if len(counts) != 1 or next(iter(counts))[1] != 0:
        raise RuntimeError(f"test-mode runs disagree or failed files: {sorted(counts)}")
    ok, _failed = counts.pop()
    return ok


def _skipped(name: str, reason: str) -> Comparison:
    cmp = Comparison(name, "find -type f (a full listing)", "mountproc run --test-mode")
    cmp.skipped = reason
    return cmp
