"""mountproc on a Dask cluster it did not start: real ``dask scheduler`` and ``dask worker``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RESIZE_JOB, clean_env, read_manifest, run_cli, slow_job, tar_digests
from helpers.dask_procs import start, start_scheduler, stop, worker_cmd
from helpers.netfs import descendants, wait_until
from helpers.tlscerts import Pem, issue, make_ca, openssl_available

from mountproc._demo_data import make_demo_tree

pytestmark = pytest.mark.cluster


def _wait_for_workers(address: str, n: int) -> None:
    """Wait until ``n`` workers have joined the scheduler at ``address``."""
    from distributed import Client

    with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(n, timeout=60)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and two workers on 127.0.0.1, started from a directory without the job."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(elsewhere, procs)
        procs += [start(worker_cmd(address), elsewhere) for _ in range(2)]
        yield address
    finally:
        stop(procs)


def test_existing_scheduler_gives_the_same_tars_as_a_local_cluster(
    tmp_path: Path, dask_cluster: str
) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=20)
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = ["run", RESIZE_JOB, "--source", src, "--shard-max-files", "6"]
    assert run_cli(*common, "--outputs", local, cwd=tmp_path).returncode == 0
    proc = run_cli(
        *common, "--outputs", remote, cwd=tmp_path, env={"DASK_SCHEDULER_ADDRESS": dask_cluster}
    )
    assert proc.returncode == 0, proc.stderr
    assert f"connected to the Dask scheduler at {dask_cluster}" in proc.stderr
    assert len(tar_digests(local)) == 4
    assert tar_digests(local) == tar_digests(remote)


def test_check_with_a_scheduler_checks_every_worker(tmp_path: Path, dask_cluster: str) -> None:
    """`mountproc check --scheduler` runs the worker checks and writes nothing to outputs."""
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    _wait_for_workers(dask_cluster, 2)
    out = tmp_path / "out"
    proc = run_cli(
        "check", RESIZE_JOB, "--source", src, "--outputs", out, "--scheduler", dask_cluster,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"workers: 2 checked at {dask_cluster}, all alike" in proc.stdout
    assert not out.exists()
    assert not (tmp_path / ".mountproc-scratch-out").exists()  # nothing left behind


def test_unreachable_scheduler_is_one_clear_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    start = time.monotonic()
    proc = run_cli(
        "run",
        RESIZE_JOB,
        "--source",
        src,
        "--outputs",
        tmp_path / "out",
        "--scheduler",
        "tcp://127.0.0.1:9",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


@pytest.mark.mount
def test_a_worker_with_its_own_scratch_sends_its_tars_over(tmp_path: Path) -> None:
    """A worker that cannot see the driver's scratch (its own tmpfs there, as on another
    machine) builds its shards in that scratch of its own; the driver copies each tar over
    the Dask connection, checks its sha256 and publishes the same bytes as a local run."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to give a worker its own mount namespace")
    src, shared = tmp_path / "src", tmp_path / "shared"
    make_demo_tree(src, count=20)
    shared.mkdir()
    common = ["run", RESIZE_JOB, "--source", src, "--shard-max-files", "6"]
    assert run_cli(*common, "--outputs", tmp_path / "local", cwd=tmp_path).returncode == 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(tmp_path, procs)
        worker = " ".join(worker_cmd(address))
        # this worker sees its own empty tmpfs where the driver sees the shared scratch
        isolated = f"mount -t tmpfs none {shared} && exec {worker}"
        procs.append(
            start(["unshare", "-m", "--propagation", "private", "sh", "-c", isolated], tmp_path)
        )
        out = tmp_path / "out"
        scratch = ["--scratch", shared / "scratch"]
        proc = run_cli(*common, "--outputs", out, *scratch, "--scheduler", address, cwd=tmp_path)
    finally:
        stop(procs)
    assert proc.returncode == 0, proc.stderr
    assert "1 worker(s) cannot see this machine's scratch (tcp://127.0.0.1:" in proc.stderr
    assert len(tar_digests(out)) == 4
    assert tar_digests(out) == tar_digests(tmp_path / "local")
    assert not list((shared / "scratch").rglob("*.partial"))


@pytest.mark.mount
def test_a_worker_that_sees_the_source_differently_stops_the_run(
    tmp_path: Path, bind_mount: Any
) -> None:
    """The driver sees a read-only bind mount; one worker, in its own mount namespace, sees a
    read-write tmpfs at the same path: the run stops before any work, naming that worker."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to give a worker its own mount namespace")
    data = tmp_path / "data"
    make_demo_tree(data, count=12)
    src = bind_mount(data, tmp_path / "mnt", readonly=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(tmp_path, procs)
        procs.append(start(worker_cmd(address), tmp_path))
        worker = " ".join(worker_cmd(address))
        other_view = f"mount -t tmpfs mountproc-test {src} && exec {worker}"
        procs.append(
            start(["unshare", "-m", "--propagation", "private", "sh", "-c", other_view], tmp_path)
        )
        _wait_for_workers(address, 2)
        proc = run_cli(
            "run",
            RESIZE_JOB,
            "--source",
            src,
            "--outputs",
            tmp_path / "out",
            "--strict-mounts",
            "--scheduler",
            address,
            cwd=tmp_path,
        )
    finally:
        stop(procs)
    assert proc.returncode == 2, proc.stderr
    assert re.search(
        rf"worker tcp://127\.0\.0\.1:\d+ on \S+ sees the source {re.escape(str(src))} differently: "
        "it is mounted read-write there",
        proc.stderr,
    ), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("*.tar"))


def test_no_worker_within_worker_wait_is_one_clear_line(tmp_path: Path) -> None:
    """A scheduler nobody joined: the run gives up after --worker-wait, saying how to fix it."""
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(tmp_path, procs)
        start = time.monotonic()
        proc = run_cli(
            "run", RESIZE_JOB, "--source", src, "--outputs", tmp_path / "out",
            "--scheduler", address, "--worker-wait", "2", cwd=tmp_path,
        )  # fmt: skip
        elapsed = time.monotonic() - start
    finally:
        stop(procs)
    assert proc.returncode == 1, proc.stderr
    assert f"no worker joined the scheduler at {address} within 2 s" in proc.stderr
    assert f"mountproc worker {address}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30
    assert not list((tmp_path / "out").glob("*.tar"))


def _run_with_one_worker(
    tmp_path: Path,
    src: Path,
    worker: Callable[[str], list[str]],
    cwd: Path,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Start a scheduler and the one worker ``worker(address)`` (from ``cwd``, with ``env``),
    then run the example job on it into tmp_path/out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(cwd, procs)
        procs.append(start(worker(address), cwd, env))
        _wait_for_workers(address, 1)
        return run_cli(
            "run", RESIZE_JOB, "--source", src, "--outputs", tmp_path / "out",
            "--scheduler", address, cwd=tmp_path,
        )  # fmt: skip
    finally:
        stop(procs)


def _fake_distribution(directory: Path, version: str) -> Path:
    """A directory that, first on a worker's PYTHONPATH, makes its installed mountproc report
    ``version`` (what a machine with another release installed reports)."""
    info = directory / f"mountproc-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mountproc\nVersion: {version}\n")
    return directory


def test_a_worker_with_another_mountproc_version_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    fake = _fake_distribution(tmp_path / "other-release", "9.9.9")
    proc = _run_with_one_worker(
        tmp_path, src, lambda address: worker_cmd(address), tmp_path, {"PYTHONPATH": str(fake)}
    )
    assert proc.returncode == 1, proc.stderr
    assert re.search(
        r"worker tcp://127\.0\.0\.1:\d+ runs mountproc 9\.9\.9, this machine ", proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("*.tar"))


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[str, Pem]]:
    """A scheduler on tls:// with a certificate of a CA made here, one `dask worker` and one
    `mountproc worker`, both presenting certificates of that CA; yields the address and the
    client's certificate."""
    if not openssl_available():
        pytest.skip("needs the openssl command to make certificates")
    ca = make_ca(tmp_path / "pki", "test-ca")
    scheduler, worker, client = (issue(ca, name) for name in ("scheduler", "worker", "client"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(elsewhere, procs, ("--protocol", "tls", *scheduler.cli()))
        assert address.startswith("tls://127.0.0.1:")
        procs.append(start([*worker_cmd(address), *worker.cli()], elsewhere))
        mp_worker = [sys.executable, "-m", "mountproc", "worker", address, "--host", "127.0.0.1"]
        procs.append(start([*mp_worker, *worker.cli()], elsewhere))
        yield address, client
    finally:
        stop(procs)


def test_tls_cluster_gives_the_same_tars_as_a_local_cluster(
    tmp_path: Path, tls_cluster: tuple[str, Pem]
) -> None:
    address, client = tls_cluster
    src = tmp_path / "src"
    make_demo_tree(src, count=20)
    common = ["run", RESIZE_JOB, "--source", src, "--shard-max-files", "6"]
    assert run_cli(*common, "--outputs", tmp_path / "local", cwd=tmp_path).returncode == 0
    out = tmp_path / "out"
    proc = run_cli(*common, "--outputs", out, "--scheduler", address, *client.cli(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"connected to the Dask scheduler at {address}" in proc.stderr
    assert "2 worker(s) see the source" in proc.stderr  # the dask worker and the mountproc one
    assert len(tar_digests(out)) == 4
    assert tar_digests(out) == tar_digests(tmp_path / "local")


def test_tls_cluster_refuses_clients_without_a_certificate_of_its_ca(
    tmp_path: Path, tls_cluster: tuple[str, Pem]
) -> None:
    address, client = tls_cluster
    _wait_for_workers_tls(address, client, 2)
    # a client that trusts the CA but shows no certificate of its own is cut off; the same
    # client with its certificate is not (the control)
    assert _refused(address, client, with_cert=False)
    assert not _refused(address, client, with_cert=True)
    # a certificate from another CA
    stranger = issue(make_ca(tmp_path / "other-pki", "other-ca"), "stranger")
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    run = ["run", RESIZE_JOB, "--source", src, "--outputs", tmp_path / "out"]
    proc = run_cli(*run, "--scheduler", address, *stranger.cli(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach the Dask scheduler at {address}" in proc.stderr
    assert "Traceback" not in proc.stderr
    # no certificate at all: refused before any connection
    proc = run_cli(*run, "--scheduler", address, cwd=tmp_path)
    assert proc.returncode == 2
    assert "uses TLS: pass --tls-ca-file, --tls-cert and --tls-key" in proc.stderr
    assert not (tmp_path / "out").exists()


def _refused(address: str, pem: Pem, with_cert: bool) -> bool:
    """Whether the scheduler at ``address`` ends a TLS connection whose client trusts the CA
    and shows its certificate or not; a connection still open after 3 s was accepted."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(pem.ca_file))
    ctx.check_hostname = False
    if with_cert:
        ctx.load_cert_chain(str(pem.cert), str(pem.key))
    try:
        with (
            socket.create_connection((host, int(port)), timeout=3) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.sendall(b"\0" * 8)  # TLS 1.3: the server's verdict comes with the reply
            return conn.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def _wait_for_workers_tls(address: str, pem: Pem, n: int) -> None:
    from distributed import Client
    from distributed.security import Security

    security = Security(  # type: ignore[no-untyped-call]
        tls_ca_file=str(pem.ca_file), tls_client_cert=str(pem.cert),
        tls_client_key=str(pem.key), require_encryption=True,
    )  # fmt: skip
    with Client(address, timeout=30, security=security) as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(n, timeout=60)


def _python_without_mountproc(venv: Path) -> Path:
    """A virtualenv that sees this interpreter's packages (dask, distributed...) through a plain
    path entry, which does not run the editable install's import hook: mountproc's metadata is
    there, but ``import mountproc`` fails, as on a worker where mountproc is not installed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_a_worker_without_mountproc_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    python = _python_without_mountproc(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [str(python), "-c", "import dask, distributed, mountproc"], cwd=elsewhere,
        env=clean_env(), capture_output=True, text=True,
    )  # fmt: skip
    if "No module named 'mountproc'" not in probe.stderr:
        pytest.skip(f"mountproc is not an editable install here: {probe.stderr[-200:]!r}")
    proc = _run_with_one_worker(
        tmp_path, src, lambda address: [str(python), *worker_cmd(address)[1:]], elsewhere
    )
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"worker tcp://127\.0\.0\.1:\d+ cannot import mountproc: install", proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("*.tar"))


SIZE_JOB = """
from mountproc import Job

job = Job(name="sizes", include=["*.jpg", "*.png", "*.txt"])

@job.transform
def size(src, ctx):
    return {"txt": str(src.size)}
"""


def _wide_tree(root: Path) -> None:
    """Real images in nested directories, a flat directory large enough for the crawl to
    classify it in chunks, skipped entries (a FIFO, a symlink, unselected files) and a
    non-UTF-8 name."""
    make_demo_tree(root, count=16)
    flat = root / "flat"
    flat.mkdir()
    for i in range(2_600):
        (flat / f"n{i:05d}.{'txt' if i % 5 else 'dat'}").write_text(str(i))
    for d in range(30):
        sub = root / "deep" / f"d{d:02d}" / "x.y"
        sub.mkdir(parents=True)
        (sub / "one.txt").write_text("1")
    os.mkfifo(root / "deep" / "pipe.txt")
    os.symlink(root / "flat" / "n00001.txt", root / "deep" / "link.txt")
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")


def test_crawl_on_the_workers_gives_the_manifest_of_a_serial_crawl(
    tmp_path: Path, dask_cluster: str
) -> None:
    """Listing fanned out over the cluster's workers (the default with --scheduler), and over
    threads on the driver, gives the same manifest and tars as the serial crawl."""
    src = tmp_path / "src"
    _wide_tree(src)
    (tmp_path / "sizes_job.py").write_text(SIZE_JOB)
    common = ["run", "sizes_job.py", "--source", src, "--shard-max-files", "500"]
    serial = run_cli(*common, "--outputs", tmp_path / "serial", "--crawl-threads", "1",
                     cwd=tmp_path)  # fmt: skip
    assert serial.returncode == 0, serial.stderr
    assert "listing the source with" not in serial.stderr
    threads = run_cli(*common, "--outputs", tmp_path / "threads", "--crawl-threads", "8",
                      cwd=tmp_path)  # fmt: skip
    assert threads.returncode == 0, threads.stderr
    assert "listing the source with 8 threads" in threads.stderr
    cluster = run_cli(*common, "--outputs", tmp_path / "cluster", "--scheduler", dask_cluster,
                      cwd=tmp_path)  # fmt: skip
    assert cluster.returncode == 0, cluster.stderr
    assert "listing the source on the cluster's workers" in cluster.stderr
    expected = read_manifest(tmp_path / "serial", "sizes")
    assert len(expected) == 16 + 2_600 + 30 + 3
    for name in ("threads", "cluster"):
        assert read_manifest(tmp_path / name, "sizes") == expected, name
        assert tar_digests(tmp_path / name) == tar_digests(tmp_path / "serial"), name


SLOW_TEXT_JOB = slow_job(0.5, name="slow-text")


def test_a_cluster_left_without_workers_stops_the_run_with_one_line(tmp_path: Path) -> None:
    """The only worker (and its nanny) is killed mid-run: instead of waiting for a worker
    forever, the run stops after --worker-wait, publishes what was complete, and says so."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02d}.txt").write_text(str(i))
    job = tmp_path / "slow_job.py"
    job.write_text(SLOW_TEXT_JOB)
    out = tmp_path / "out"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(tmp_path, procs)
        worker = start(worker_cmd(address), tmp_path)
        procs.append(worker)
        _wait_for_workers(address, 1)
        run = subprocess.Popen(
            [sys.executable, "-m", "mountproc", "run", str(job), "--source", str(src),
             "--outputs", str(out), "--scheduler", address, "--worker-wait", "3",
             "--shard-max-files", "4"],
            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        procs.append(run)  # type: ignore[arg-type]
        wait_until(lambda: any(out.glob("*.tar")), 60, "a first published tar")
        children = descendants(worker.pid)  # the worker process under `dask worker`'s nanny
        worker.kill()  # the nanny first: it would start a new worker
        for child in children:
            child.signal(signal.SIGKILL)
        _, stderr = run.communicate(timeout=60)
    finally:
        stop(procs)
    assert run.returncode == 1, stderr
    assert f"every Dask worker left the cluster at {address}" in stderr
    assert "within 3 s (--worker-wait)" in stderr
    assert "Traceback" not in stderr
    published = sorted(p.name for p in out.glob("*.tar"))
    assert 1 <= len(published) < 10
    assert (out / "valohai.metadata.jsonl").exists()


def _profiling(dask_worker: Any = None) -> bool:
    return "profile" in dask_worker.periodic_callbacks


_profiling.__module__ = "__main__"  # pickled by value: workers cannot import this test module


def test_the_embedded_clusters_workers_do_not_run_dasks_profiler() -> None:
    """Dask's profiler sampling every stack every 10 ms can deadlock a CPython 3.11 worker
    (gh-106883, seen twice in the benchmarks): the embedded cluster's workers run without it,
    also after a worker is restarted."""
    from mountproc._cluster.client import ClusterOptions, open_cluster

    with open_cluster(ClusterOptions(workers=2)) as client:
        assert set(client.run(_profiling).values()) == {False}
        client.restart()
        assert set(client.run(_profiling).values()) == {False}


def test_mountproc_worker_runs_dask_workers_without_the_profiler(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        address = start_scheduler(tmp_path, procs)
        cmd = [sys.executable, "-m", "mountproc", "worker", address, "--nworkers", "1"]
        procs.append(start(cmd, tmp_path))
        _wait_for_workers(address, 1)
        from distributed import Client

        with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
            assert list(client.run(_profiling).values()) == [False]
    finally:
        stop(procs)


def test_retries_share_one_policy_per_process() -> None:
    """A policy built per call leaves a threading.local in a reference cycle per file: the
    garbage the deadlock above feeds on."""
    import gc

    from tenacity import Retrying

    from mountproc._shard import worker as _worker

    gc.collect()
    # type(), not isinstance: isinstance reads __class__, which some lazy objects (torch's
    # deprecated aliases, imported by the wids test) answer with a warning
    before = sum(type(o) is Retrying for o in gc.get_objects())
    for _ in range(50):
        assert _worker._with_retries(lambda: 7) == 7
    assert sum(type(o) is Retrying for o in gc.get_objects()) - before <= 1
