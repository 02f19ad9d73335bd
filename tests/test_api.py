"""``mountproc.run``, the Python entry point: a job file or a ``Job`` made in Python, on the
embedded cluster or on a client the caller already has; the same tars as the command line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from helpers import slow_job, tar_digests
from helpers.pinned import JOB, PINNED, make_tree
from helpers.pinned_job import job as in_python  # a Job made in Python: pickled by value

import mountproc
from mountproc import FailureBudgetExceeded, RunReport, SettingsError

SETTINGS = {"shard_max_files": 3, "max_failures": 1}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_tree(src)
    return src


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "pinned.py"
    path.write_text(JOB)
    return path


@pytest.fixture
def client() -> Iterator[Client]:
    """A cluster the caller made itself, as a dask-jobqueue or dask-gateway user would."""
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")  # type: ignore[no-untyped-call]
    with cluster, Client(cluster) as c:  # type: ignore[no-untyped-call]
        yield c


def _settings(tmp_path: Path, src: Path, **extra: Any) -> dict[str, Any]:
    out = {"source": src, "outputs": tmp_path / "out", "scratch": tmp_path / "scratch"}
    return {**SETTINGS, **out, "workers": 1, **extra}


@pytest.mark.cluster
def test_a_job_file_runs_to_the_pinned_tars(tmp_path: Path, tree: Path, job_file: Path) -> None:
    report = mountproc.run(str(job_file), **_settings(tmp_path, tree))
    assert isinstance(report, RunReport)
    assert report.within_budget
    assert report.outputs == tmp_path / "out"
    assert (report.summary["files_ok"], report.summary["files_failed"]) == (6, 1)
    assert tar_digests(tmp_path / "out") == PINNED


@pytest.mark.cluster
def test_a_job_made_in_python_runs_to_the_same_tars(tmp_path: Path, tree: Path) -> None:
    report = mountproc.run(in_python, **_settings(tmp_path, tree))
    assert report.summary["job"] == "pinned"
    assert tar_digests(tmp_path / "out") == PINNED


@pytest.mark.cluster
def test_a_given_client_is_used_and_left_open(
    tmp_path: Path, tree: Path, job_file: Path, client: Client
) -> None:
    events: list[dict[str, Any]] = []
    settings = _settings(tmp_path, tree)
    del settings["workers"]
    mountproc.run(job_file, client=client, progress=events.append, **settings)
    assert tar_digests(tmp_path / "out") == PINNED
    assert events[-1]["shards_done"] == events[-1]["shards_total"] == 3
    assert client.status == "running"
    assert client.submit(os.getpid).result(timeout=30) != os.getpid()  # still usable


@pytest.mark.cluster
def test_over_budget_raises_with_the_report(tmp_path: Path, tree: Path, job_file: Path) -> None:
    with pytest.raises(FailureBudgetExceeded, match="1 of 8 files failed") as raised:
        mountproc.run(job_file, **_settings(tmp_path, tree, max_failures=0, keep_going=True))
    report = raised.value.report
    assert isinstance(report, RunReport)
    assert not report.within_budget
    assert report.summary["files_failed"] == 1
    assert tar_digests(tmp_path / "out") == PINNED  # what was done is published


def test_a_wrong_setting_is_an_error_before_any_work(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(SettingsError, match="--shard-max-files"):
        mountproc.run(in_python, **_settings(tmp_path, tree, shard_max_files=0))
    with pytest.raises(SettingsError, match="unknown setting --no-such-setting"):
        mountproc.run(in_python, **_settings(tmp_path, tree, no_such_setting=1))
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "scratch").exists()


SLOW_JOB = slow_job(0.15)


@pytest.mark.cluster
def test_progress_advances_per_file_not_per_shard(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}.txt").write_text(str(i))
    job = tmp_path / "slow.py"
    job.write_text(SLOW_JOB)
    events: list[dict[str, Any]] = []
    mountproc.run(job, source=src, outputs=tmp_path / "out", workers=1, progress=events.append)
    within = [e["files_done"] for e in events if e["shards_done"] == 0]
    assert any(0 < done < 20 for done in within), events  # the one shard, seen mid-way
    done = [e["files_done"] for e in events]
    assert done == sorted(done)
    assert events[-1]["files_done"] == events[-1]["files_ok"] == 20
