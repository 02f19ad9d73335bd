"""Where the work of a run goes: the crawl's executor, and the `mountproc worker` command."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers import run_cli
from helpers.tlscerts import issue, make_ca, openssl_available

from mountproc._job import Job
from mountproc._listing.stage import lister as _lister
from mountproc._mounts.source import check_source
from mountproc._mounts.table import left_stuck
from mountproc._resolve import resolve


def _job() -> Job:
    job = Job(name="placement")
    job.transform(lambda src, ctx: {})
    return job


@pytest.mark.parametrize("threads", [1, 4])
def test_the_listing_threads_end_with_the_crawl(tmp_path: Path, threads: int) -> None:
    """A finished threaded crawl leaves no thread behind and nothing noted as stuck (which
    would make the CLI skip the interpreter's shutdown)."""
    (tmp_path / "a.txt").write_text("a")
    run = resolve(_job(), {"source": tmp_path, "crawl_threads": threads}, {}, {})
    mount, _ = check_source(tmp_path, strict=False, allow_writable=True)
    with _lister(run, mount, None) as pool:
        if threads == 1:
            assert pool is None  # serial
        else:
            assert pool is not None
            assert sorted(pool.map(str, range(10))) == sorted(map(str, range(10)))
    assert not [t for t in threading.enumerate() if t.name.startswith("mountproc-list")]
    assert not left_stuck()


def test_a_local_disk_is_listed_serially_by_default(tmp_path: Path) -> None:
    run = resolve(_job(), {"source": tmp_path}, {}, {})
    mount, _ = check_source(tmp_path, strict=False, allow_writable=True)
    assert mount.kind == "local"
    with _lister(run, mount, None) as pool:
        assert pool is None


def test_worker_refuses_tls_files_for_a_plain_tcp_scheduler(tmp_path: Path) -> None:
    """Certificates given with a tcp:// address would be ignored by dask: clear text the user
    thinks is encrypted."""
    if not openssl_available():
        pytest.skip("needs the openssl command to make certificates")
    pem = issue(make_ca(tmp_path / "pki", "ca"), "worker")
    proc = run_cli("worker", "tcp://127.0.0.1:8786", *pem.cli(), cwd=tmp_path)
    assert proc.returncode == 2
    assert "the scheduler address tcp://127.0.0.1:8786 is not tls://" in proc.stderr


def test_worker_needs_certificates_for_a_tls_scheduler(tmp_path: Path) -> None:
    proc = run_cli("worker", "tls://127.0.0.1:8786", cwd=tmp_path)
    assert proc.returncode == 2
    assert "uses TLS: pass --tls-ca-file, --tls-cert and --tls-key" in proc.stderr
