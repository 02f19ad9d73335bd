"""An existing cluster named by its scheduler file, and shards that need Dask resources: on
real ``dask scheduler`` and ``dask worker`` processes, workers with and without the resource."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli, tar_digests
from helpers.dask_procs import start, start_scheduler, stop, worker_cmd
from helpers.netfs import wait_until

import mountproc

pytestmark = pytest.mark.cluster

WHO_JOB = """\
import os
from mountproc import Job

job = Job(name="who")


@job.transform
def transform(src, ctx):
    return {"txt": os.environ.get("WORKER_KIND", "?").encode()}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    """A scheduler (its file in ``tmp_path/elsewhere``), a worker offering GPU=1 and one not."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(elsewhere, procs)
        procs.append(start([*worker_cmd(address), "--resources", "GPU=1"], elsewhere,
                           {"WORKER_KIND": "gpu"}))  # fmt: skip
        procs.append(start(worker_cmd(address), elsewhere, {"WORKER_KIND": "cpu"}))
        with mountproc_client(address) as client:
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "two workers")
        yield elsewhere / "scheduler.json"
    finally:
        stop(procs)


def mountproc_client(address: str):  # type: ignore[no-untyped-def]
    from distributed import Client

    return Client(address, timeout=30)  # type: ignore[no-untyped-call]


def _tree(root: Path) -> Path:
    for i in range(12):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i:02d}.txt").write_text(str(i))
    return root


def test_a_scheduler_file_names_the_cluster(tmp_path: Path, cluster: Path) -> None:
    src = _tree(tmp_path / "src")
    job = tmp_path / "who.py"
    job.write_text(WHO_JOB)
    common = ["run", job, "--source", src, "--shard-max-files", "3"]
    local = run_cli(*common, "--outputs", tmp_path / "local", "--workers", "1", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    proc = run_cli(*common, "--outputs", tmp_path / "remote", "--scheduler-file", cluster,
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "connected to the Dask scheduler at tcp://127.0.0.1:" in proc.stderr
    assert len(tar_digests(tmp_path / "remote")) == 4


def test_shards_needing_a_resource_run_only_where_it_is(tmp_path: Path, cluster: Path) -> None:
    src = _tree(tmp_path / "src")
    job = tmp_path / "who.py"
    job.write_text(WHO_JOB)
    out = tmp_path / "out"
    mountproc.run(job, source=src, outputs=out, scheduler_file=cluster, resources="GPU=1",
                  shard_max_files=2)  # fmt: skip
    frame = mountproc.manifest(out)
    assert len(frame) == 12
    import tarfile

    kinds = set()
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".txt"):
                    kinds.add(tf.extractfile(member).read())  # type: ignore[union-attr]
    assert kinds == {b"gpu"}


def test_no_worker_offering_the_resource_is_one_line(tmp_path: Path, cluster: Path) -> None:
    src = _tree(tmp_path / "src")
    job = tmp_path / "who.py"
    job.write_text(WHO_JOB)
    proc = run_cli("run", job, "--source", src, "--outputs", tmp_path / "out",
                   "--scheduler-file", cluster, "--resources", "TPU=1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("mountproc: error: no worker offers --resources TPU=1: start workers with")
    )


def test_a_missing_scheduler_file_is_one_line(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    job = tmp_path / "who.py"
    job.write_text(WHO_JOB)
    missing = tmp_path / "none.json"
    proc = run_cli("run", job, "--source", src, "--scheduler-file", missing, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"mountproc: error: --scheduler-file {missing}: no such file (start the scheduler "
        f"first: dask scheduler --scheduler-file {missing})"
    )
