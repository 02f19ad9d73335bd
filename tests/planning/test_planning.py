"""Tests of ``_planning``: ``plan_job`` on real trees with the real example job, and on
small job files of its own; nothing may be written beside the outputs."""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import stat
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NON_UTF8, RESIZE_JOB, make_hostile_tree, run_cli

import mountproc
from mountproc._demo_data import BAD_FILES, make_demo_tree
from mountproc._errors import JobSetupError, MountError
from mountproc._job import Job
from mountproc._jobfile import load_job, read_job_file
from mountproc._mounts.dirs import human_bytes
from mountproc._planning.estimate import PlanReport, plan_job
from mountproc._planning.render import render
from mountproc._records import JobRef
from mountproc._resolve import ResolvedRun, resolve

SLOW_JOB = '''
"""Copies text files; a file named slow*.txt takes a minute, and setup fails on request."""

from __future__ import annotations

import time

from pydantic import BaseModel

from mountproc import Context, Job, SourceFile


class Params(BaseModel):
    fail_setup: bool = False


job = Job(name="slow-text", include=["*.txt"], params=Params)


@job.setup
def setup(params: Params) -> None:
    if params.fail_setup:
        raise RuntimeError("no model today")


@job.transform
def copy(src: SourceFile, ctx: Context[Params]) -> dict[str, bytes]:
    if src.relpath.rsplit("/", 1)[-1].startswith("slow"):
        time.sleep(60)
    return {"txt": src.read_bytes()}
'''


@pytest.fixture(autouse=True)
def system_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp directory, moved into ``tmp_path`` to see what is left in it."""
    temp = tmp_path / "system-temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def _resize() -> tuple[JobRef, Job]:
    ref = read_job_file(RESIZE_JOB)
    return ref, load_job(ref)


def _resolved(job: Job, src: Path, out: Path, **settings: Any) -> ResolvedRun:
    return resolve(job, {"source": src, "outputs": out, **settings}, {}, {})


def _walk(src: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry but directories, as ``(relative path, lstat)``, in the crawl's order:
    depth first, names sorted at every level."""
    found = []
    for top, _dirs, names in os.walk(src):
        for name in names:
            path = Path(top, name)
            found.append((path.relative_to(src).as_posix(), path.lstat()))
    yield from sorted(found, key=lambda item: item[0].split("/"))


def _selected(job: Job, src: Path) -> list[int]:
    """Sizes of the regular files the job's include patterns select, in the crawl's order."""
    return [
        st.st_size
        for rel, st in _walk(src)
        if stat.S_ISREG(st.st_mode)
        and any(fnmatch.fnmatch(rel.rsplit("/", 1)[-1].lower(), p.lower()) for p in job.include)
    ]


def _nothing_written(tmp_path: Path, run: ResolvedRun, system_temp: Path, *kept: Path) -> None:
    assert not run.outputs.exists()
    assert not run.scratch.exists()  # .mountproc-scratch-<outputs> beside the outputs
    assert sorted(tmp_path.iterdir()) == sorted([system_temp, *kept])
    assert list(system_temp.iterdir()) == []  # the temporary directory is gone too


def test_the_figures_are_the_trees_own(tmp_path: Path, system_temp: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    make_hostile_tree(src, outside)
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out", shard_max_files=7, test_size=10, workers=3)

    report = plan_job(job, ref, run, timed=4)

    sizes = _selected(job, src)
    assert report.entries == len(list(_walk(src)))
    assert (report.files, report.bytes) == (len(sizes), sum(sizes))
    assert report.shards == math.ceil(len(sizes) / 7)
    shards = [sizes[i : i + 7] for i in range(0, len(sizes), 7)]
    assert report.largest_shard_files == 7
    assert report.largest_shard_bytes == max(sum(shard) for shard in shards)
    assert (report.test_size, report.test_files, report.test_shards) == (10, 10, 2)
    skipped = dict(report.skipped)
    assert skipped == {"symlink (never followed)": 1, "not a regular file (fifo)": 1}
    assert report.entries - report.files == sum(skipped.values())
    assert report.source == str(src)
    _nothing_written(tmp_path, run, system_temp, src, outside)


def test_the_estimate_is_the_median_times_files_over_workers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out", test_size=1000)

    report = plan_job(job, ref, run, timed=5)

    assert report.timed_files == 5
    assert report.timed_failed == 0
    assert report.per_file_s is not None
    assert report.per_file_s > 0
    assert report.setup_s > 0
    assert report.workers == report.threads == os.cpu_count()
    assert report.estimate_s == pytest.approx(report.per_file_s * report.files / report.threads)
    # a --test-size above the tree's size takes every file, in the run's shards
    assert (report.test_files, report.test_shards) == (report.files, report.shards) == (12, 1)


def test_the_estimate_counts_threads_per_worker(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out", workers=3, threads_per_worker=4)
    report = plan_job(job, ref, run, timed=2)
    assert (report.workers, report.threads) == (3, 12)
    assert report.per_file_s is not None
    assert report.estimate_s == pytest.approx(report.per_file_s * report.files / 12)


@pytest.mark.cluster
def test_the_estimate_counts_an_existing_clusters_threads(tmp_path: Path) -> None:
    """A real scheduler with two workers of 3 threads: 6 tasks at once, whatever the settings
    of this machine say."""
    from distributed import LocalCluster

    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    ref, job = _resize()
    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2, threads_per_worker=3, processes=False, dashboard_address=":0"
    ) as cluster:
        run = _resolved(job, src, tmp_path / "out", scheduler=cluster.scheduler_address)
        report = plan_job(job, ref, run, timed=2)
    assert (report.workers, report.threads) == (2, 6)


def test_bad_timed_files_are_counted_as_failed(tmp_path: Path, system_temp: Path) -> None:
    src = tmp_path / "src"
    make_hostile_tree(src, tmp_path / "outside")
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out")

    report = plan_job(job, ref, run, timed=1000)  # every file

    assert report.timed_files == report.files
    assert report.timed_failed == len(BAD_FILES)
    assert report.timed_error is not None
    lines = render(report)
    assert any(f"; {len(BAD_FILES)} failed (first: " in line for line in lines)
    assert not any(line.startswith("warning") for line in lines)
    assert list(system_temp.iterdir()) == []


def test_every_timed_file_failing_is_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "notes.jpg").write_text("not an image")
    (src / "b").mkdir()
    (src / "b" / "zeros.png").write_bytes(bytes(100))
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out")

    report = plan_job(job, ref, run)

    assert (report.timed_files, report.timed_failed) == (2, 2)
    assert "not a readable image" in (report.timed_error or "")
    warning = [line for line in render(report) if line.startswith("warning")]
    assert len(warning) == 1
    assert "every timed file failed" in warning[0]


@pytest.mark.parametrize("tree", ["empty", "nothing selected"])
def test_a_tree_without_files_fails_as_run_fails(
    tmp_path: Path, system_temp: Path, tree: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if tree == "nothing selected":
        (src / "notes.txt").write_text("x")
        (src / "sub").mkdir()
        (src / "sub" / "data.csv").write_text("x")
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out")

    with pytest.raises(MountError) as planned:
        plan_job(job, ref, run)
    _nothing_written(tmp_path, run, system_temp, src)
    with pytest.raises(MountError) as ran:
        mountproc.run(job, source=src, outputs=tmp_path / "out")

    assert str(planned.value) == str(ran.value)
    assert ("is empty" if tree == "empty" else "none selected") in str(planned.value)


def _slow_job(tmp_path: Path) -> tuple[JobRef, Job]:
    path = tmp_path / "slow_job.py"
    path.write_text(textwrap.dedent(SLOW_JOB))
    ref = read_job_file(path)
    return ref, load_job(ref)


def test_a_file_over_the_time_limit_fails_and_the_timing_goes_on(tmp_path: Path) -> None:
    """The worker's watchdog kills the sampling process, never this one; a fresh process
    takes the next file."""
    src = tmp_path / "src"
    for rel in ("a/fast.txt", "b/slow.txt", "c/fast.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    ref, job = _slow_job(tmp_path)
    run = _resolved(job, src, tmp_path / "out", file_timeout=1)

    report = plan_job(job, ref, run)

    assert (report.timed_files, report.timed_failed) == (3, 1)
    assert report.timed_error == "took longer than --file-timeout=1s"


def test_a_failing_setup_stops_the_plan(tmp_path: Path, system_temp: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    ref, job = _slow_job(tmp_path)
    run = resolve(job, {"source": src, "outputs": tmp_path / "out"}, {"fail_setup": "true"}, {})

    with pytest.raises(JobSetupError, match="no model today"):
        plan_job(job, ref, run)

    assert list(system_temp.iterdir()) == []


def test_render() -> None:
    report = PlanReport(
        source="/mnt/raw",
        mount="nfs4 10.0.0.2:/share, network",
        entries=12_400,
        files=12_345,
        bytes=int(3.2 * 2**30),
        skipped=(("not selected by include/exclude patterns", 50), ("symlink (never followed)", 5)),
        shards=13,
        largest_shard_files=1_000,
        largest_shard_bytes=2**30,
        test_size=100,
        test_files=100,
        test_shards=1,
        timed_files=8,
        timed_failed=0,
        timed_error=None,
        setup_s=1.25,
        per_file_s=0.041,
        workers=2,
        threads=2,
        estimate_s=240.0,
        listing_s=3.14159,
    )

    assert render(report) == [
        "source       /mnt/raw (nfs4 10.0.0.2:/share, network)",
        "listed       12,400 entries in 3.14 s",
        "skipped      55 entries: 50 not selected by include/exclude patterns, "
        "5 symlink (never followed)",
        f"files        12,345 ({human_bytes(int(3.2 * 2**30))}) in 13 shards "
        "(largest 1,000 files, 1.0 GiB)",
        "test mode    100 files in 1 shard (--test-size 100)",
        "timed        8 files: 0.041 s per file (median), setup 1.25 s per worker process; "
        "0 failed",
        "estimate     about 4 min on 2 workers, 2 threads (per-file median x files / threads; "
        "tar writing and a network mount add to it; threads beyond the cores help only a "
        "transform that waits or releases the GIL)",
        "outputs      nothing written",
    ]


def test_the_non_utf8_name_is_planned_like_any_other(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=11)
    shutil.copyfile(next(src.rglob("*.jpg")), src / NON_UTF8)
    ref, job = _resize()
    run = _resolved(job, src, tmp_path / "out")

    report = plan_job(job, ref, run, timed=1000)

    assert (report.files, report.timed_files, report.timed_failed) == (12, 12, 0)


def test_plan_command_prints_the_figures_and_writes_nothing(tmp_path: Path) -> None:
    """`mountproc plan` end to end: the real CLI, the example job, a demo tree."""
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo_tree(src, count=30)
    proc = run_cli("plan", RESIZE_JOB, "--source", src, "--outputs", out,
                   "--shard-max-files", "8", "--test-size", "5", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("files        30 (") and "in 4 shards" in line for line in lines)
    assert "test mode    5 files in 1 shard (--test-size 5)" in lines
    assert lines[-1] == "outputs      nothing written"
    assert not out.exists()
    assert not (tmp_path / ".mountproc-scratch-out").exists()
