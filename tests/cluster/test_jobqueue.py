"""Workers as batch jobs (``--cluster``) on a real single-node Slurm cluster started by the tests
(``helpers.slurm``), with dask-jobqueue keeping the scheduler and workers on loopback; and the
mistakes around ``--cluster``, ``--adapt`` and ``--worker-memory`` as one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import RESIZE_JOB, clean_env, run_cli, tar_digests
from helpers.netfs import wait_until
from helpers.slurm import SlurmCluster, slurm_available, slurm_cluster

from mountproc._cluster import warm
from mountproc._demo_data import make_demo_tree
from mountproc._job import Job
from mountproc._resolve import resolve

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MIB = 1 << 20

SLOW_JOB = """\
import io
import time

from PIL import Image

from mountproc import Job

job = Job(name="slow-thumbs", include=["*.jpg", "*.png"])


@job.transform
def thumb(src, ctx):
    time.sleep(0.5)  # long enough for a worker job to be cancelled with a shard in flight
    with Image.open(src.open()) as im:
        im = im.convert("RGB")
        im.thumbnail((64, 64))
        out = io.BytesIO()
        im.save(out, "PNG")
    return {"png": out.getvalue()}
"""


def _dask_config(directory: Path, logs: Path) -> dict[str, Any]:
    """Write the user's Dask config for the test cluster into ``directory`` (one core per job,
    workers on loopback); return it as ``dask.config.set`` takes it."""
    slurm = {
        "cores": 1,
        "memory": "1GiB",
        "processes": 1,
        "walltime": "00:10:00",
        "interface": "lo",  # scheduler and workers on 127.0.0.1, like every network test here
        "log-directory": str(logs),
        "scheduler-options": {"dashboard_address": "127.0.0.1:0"},
    }
    # a lost job is noticed sooner than the default 15 s (what a user may set, too)
    lost = {"distributed": {"deploy": {"lost-worker-timeout": "3s"}}}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": slurm}, **lost}))
    # the same, as dask.config.set takes it (a nested dict would replace whole sections)
    flat = {f"jobqueue.slurm.{key}": value for key, value in slurm.items()}
    return {**flat, "distributed.deploy.lost-worker-timeout": "3s"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node Slurm cluster, stopped (by PID) after this module's tests."""
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("dask_jobqueue", reason='dask-jobqueue: pip install "mountproc[hpc]"')
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def hpc_env(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What a run needs to find the Slurm cluster and the Dask config of its jobs."""
    config = tmp_path_factory.mktemp("dask-config")
    _dask_config(config, config / "logs")
    return {**slurm.env(), "DASK_CONFIG": str(config)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_demo_tree(root, count=32)
    return root


Midway = Callable[["subprocess.Popen[bytes]", list[str]], None]
"""Done once, when the first tar is published and both worker jobs run: given the run's
process and the running jobs' ids."""


def _run_watching(
    args: list[object],
    cwd: Path,
    env: dict[str, str],
    slurm: SlurmCluster,
    midway: Midway | None = None,
) -> tuple[int, str, list[dict[str, str]]]:
    """Run ``mountproc`` while watching ``squeue``, doing ``midway`` once the first tar is
    published with two worker jobs running. Return the exit code, stderr and every different
    queue seen."""
    err = cwd / f"stderr-{time.monotonic_ns()}.txt"
    with err.open("w") as stderr:
        cmd = [sys.executable, "-m", "mountproc", *map(str, args)]
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(env), stdout=subprocess.DEVNULL,
                                stderr=stderr)  # fmt: skip
        queues: list[dict[str, str]] = [{}]
        outputs = Path(str(args[args.index("--outputs") + 1]))
        deadline = time.monotonic() + 150
        while proc.poll() is None and time.monotonic() < deadline:
            queue = slurm.jobs()
            if queue != queues[-1]:
                queues.append(queue)
            running = slurm.running()
            if midway is not None and list(outputs.glob("*.tar")) and len(running) == 2:
                midway(proc, running)
                midway = None
            time.sleep(0.2)
        code = proc.wait(timeout=60)
    assert midway is None, "the run ended before its midway step"
    return code, err.read_text(), queues


def _embedded(job: Path, photos: Path, outputs: Path, *extra: object) -> dict[str, str]:
    proc = run_cli("run", job, "--source", photos, "--outputs", outputs, "--workers", "2",
                   *extra, cwd=outputs.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return tar_digests(outputs)


@pytest.mark.parametrize(
    ("size", "submitted"),
    [
        (["--workers", "2"], "submitted 2 slurm worker job(s)"),
        (["--adapt", "0:2"], "submitted 1 slurm worker job(s); adapting between 1 and 2"),
    ],
)
def test_slurm_worker_jobs_make_the_embedded_clusters_tars(
    tmp_path: Path,
    photos: Path,
    slurm: SlurmCluster,
    hpc_env: dict[str, str],
    size: list[str],
    submitted: str,
) -> None:
    """Worker jobs, in squeue while the run goes on and gone once it ends; the same tars as
    the embedded cluster's, byte for byte."""
    common = ["--source", photos, "--shard-max-files", "6"]
    expected = _embedded(RESIZE_JOB, photos, tmp_path / "local", "--shard-max-files", "6")
    out = tmp_path / "slurm"
    args: list[object] = ["run", RESIZE_JOB, *common, "--outputs", out, "--cluster", "slurm"]
    code, stderr, queues = _run_watching([*args, *size], tmp_path, hpc_env, slurm)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert len(expected) == 6
    assert tar_digests(out) == expected
    assert submitted in stderr
    assert any("R" in q.values() for q in queues), queues
    if size[0] == "--workers":
        assert any(sorted(q.values()) == ["R", "R"] for q in queues), queues
    assert re.search(r"cancelled [12] slurm worker job\(s\)", stderr), stderr
    wait_until(lambda: not slurm.jobs(), 30, "the worker jobs have left squeue")


def test_a_cancelled_worker_job_is_replaced_and_the_tars_are_the_same(
    tmp_path: Path, photos: Path, slurm: SlurmCluster, hpc_env: dict[str, str]
) -> None:
    """scancel of one of two worker jobs mid-run: its shard runs again elsewhere, a new job
    is submitted in its place, and the tars are the embedded cluster's."""
    job = tmp_path / "slow.py"
    job.write_text(SLOW_JOB)
    expected = _embedded(job, photos, tmp_path / "local", "--shard-max-files", "2")
    out = tmp_path / "slurm"
    args: list[object] = ["run", job, "--source", photos, "--shard-max-files", "2"]
    args += ["--outputs", out, "--cluster", "slurm", "--workers", "2"]

    def scancel(proc: subprocess.Popen[bytes], running: list[str]) -> None:
        slurm.command("scancel", running[0])

    code, stderr, queues = _run_watching(args, tmp_path, hpc_env, slurm, scancel)
    assert code == 0, stderr
    assert tar_digests(out) == expected
    ids = {job_id for queue in queues for job_id in queue}
    assert len(ids) == 3, queues  # two jobs, then the one that replaced the cancelled job
    assert "left the cluster (cancelled, out of walltime, or its node failed)" in stderr
    wait_until(lambda: not slurm.jobs(), 30, "the worker jobs have left squeue")


def test_sigterm_to_the_run_cancels_its_worker_jobs(
    tmp_path: Path, photos: Path, slurm: SlurmCluster, hpc_env: dict[str, str]
) -> None:
    """SIGTERM (how Slurm stops a driver at its time limit): what is complete is published,
    the worker jobs are cancelled, exit 143."""
    job = tmp_path / "slow.py"
    job.write_text(SLOW_JOB)
    out = tmp_path / "slurm"
    args: list[object] = ["run", job, "--source", photos, "--shard-max-files", "2"]
    args += ["--outputs", out, "--cluster", "slurm", "--workers", "2"]

    def terminate(proc: subprocess.Popen[bytes], running: list[str]) -> None:
        proc.send_signal(signal.SIGTERM)

    code, stderr, _ = _run_watching(args, tmp_path, hpc_env, slurm, terminate)
    assert code == 143, stderr
    assert "cancelled 2 slurm worker job(s)" in stderr
    assert "Traceback" not in stderr
    assert 1 <= len(tar_digests(out)) < 16
    wait_until(lambda: not slurm.jobs(), 30, "the worker jobs have left squeue")


def test_check_with_a_cluster_checks_the_worker_jobs_and_cancels_them(
    tmp_path: Path, photos: Path, slurm: SlurmCluster, hpc_env: dict[str, str]
) -> None:
    proc = run_cli("check", RESIZE_JOB, "--source", photos, "--outputs", tmp_path / "out",
                   "--cluster", "slurm", "--workers", "2", cwd=tmp_path, env=hpc_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "checked at slurm worker jobs (cancelled again), all alike" in proc.stdout
    assert "see the source as this machine does" in proc.stderr
    wait_until(lambda: not slurm.jobs(), 30, "the worker jobs have left squeue")


def _resolved(tmp_path: Path, **settings: Any) -> Any:
    (tmp_path / "src").mkdir(exist_ok=True)
    return resolve(Job(name="mem"), {"source": tmp_path / "src", **settings}, {}, {})


def _memory_limits(client: Any) -> list[int]:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return [int(w["memory_limit"]) for w in workers]


def test_worker_memory_limits_the_embedded_workers(tmp_path: Path) -> None:
    from mountproc._cluster.client import open_cluster
    from mountproc._cluster.placement import cluster_options

    run = _resolved(tmp_path, workers=2, worker_memory="300MiB")
    with open_cluster(cluster_options(run)) as client:
        assert _memory_limits(client) == [300 * MIB, 300 * MIB]


def test_worker_memory_limits_the_worker_jobs(
    tmp_path: Path, slurm: SlurmCluster, hpc_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--worker-memory`` replaces ``jobqueue.slurm.memory``: the job asks Slurm for it and
    its worker is limited to it; the job is gone once the cluster closes."""
    import dask

    from mountproc._cluster.jobqueue import batch_cluster
    from mountproc._cluster.placement import batch_options

    monkeypatch.setenv("SLURM_CONF", hpc_env["SLURM_CONF"])
    config = _dask_config(tmp_path / "dask", tmp_path / "logs")
    run = _resolved(tmp_path, cluster="slurm", worker_memory="400MiB")
    opts = batch_options(run)
    assert opts is not None
    with dask.config.set(config), batch_cluster(opts) as client:
        assert _memory_limits(client) == [400 * MIB]
        # what the worker job sets that this process's config cannot reach
        mmap = client.run(os.environ.get, "MALLOC_MMAP_THRESHOLD_")
        assert list(mmap.values()) == [warm.MALLOC["MALLOC_MMAP_THRESHOLD_"]]
        (job_id,) = slurm.running()
        assert "MinMemoryNode=400M" in slurm.command("scontrol", "show", "job", job_id)
    wait_until(lambda: not slurm.jobs(), 30, "the worker job has left squeue")


def _one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr.strip().splitlines()[-1], proc.stderr


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--cluster", "torque"], "Invalid value for '--cluster': 'torque' is not one of 'slurm'"),
        (["--cluster", "slurm", "--adapt", "4"], "invalid setting --adapt: '4' is not MIN:MAX"),
        (["--cluster", "slurm", "--adapt", "5:2"], "MAX must be at least 1 and at least MIN"),
        (["--adapt", "1:4"], "--adapt adapts the worker jobs of --cluster: add --cluster"),
        (["--cluster", "slurm", "--workers", "2", "--adapt", "1:4"], "contradict each other"),
    ],
)
def test_cluster_mistakes_are_one_line(tmp_path: Path, extra: list[str], text: str) -> None:
    (tmp_path / "src").mkdir()
    proc = run_cli("run", RESIZE_JOB, "--source", tmp_path / "src", *extra, cwd=tmp_path)
    _one_line_error(proc, text)


def test_a_missing_dask_jobqueue_is_one_line_before_any_work(tmp_path: Path) -> None:
    """As on a machine without the extra: ``import dask_jobqueue`` fails."""
    make_demo_tree(tmp_path / "src", count=12, size=(64, 48))
    script = (
        "import sys; sys.modules['dask_jobqueue'] = None  # what a missing package raises\n"
        "from mountproc._cli import main; main()\n"
    )
    args = ["run", str(RESIZE_JOB), "--source", "src", "--outputs", "out", "--cluster", "pbs"]
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    _one_line_error(proc, '--cluster pbs needs dask-jobqueue: pip install "mountproc[hpc]"')
    assert not (tmp_path / "out").exists()


def test_a_jobqueue_config_without_cores_is_one_line(tmp_path: Path) -> None:
    make_demo_tree(tmp_path / "src", count=12, size=(64, 48))
    empty = tmp_path / "dask"
    empty.mkdir()
    env = {"DASK_CONFIG": str(empty), "HOME": str(tmp_path)}  # no ~/.config/dask either
    proc = run_cli("run", RESIZE_JOB, "--source", "src", "--outputs", "out", "--cluster", "sge",
                   cwd=tmp_path, env=env)  # fmt: skip
    _one_line_error(proc, "--cluster sge: set cores and memory per worker job in the Dask")
    assert not list(tmp_path.glob("out/*.tar"))
