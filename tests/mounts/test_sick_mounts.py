"""The mount contract on a real network file system (sshfs over sshd on 127.0.0.1) and on a
real full disk (a small tmpfs): accepted when healthy, and when the server dies, hangs or the
disk fills up mid-run, the run ends within a bounded time with a clear error and nothing partial
published."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RESIZE_JOB, clean_env, read_metadata, run_cli, tar_digests
from helpers.netfs import SshfsMount, sshfs_available, wait_until

from mountproc._demo_data import make_demo_tree

pytestmark = pytest.mark.mount

NO_SSHFS = sshfs_available()
needs_sshfs = pytest.mark.skipif(NO_SSHFS is not None, reason=str(NO_SSHFS))
NO_CACHE = ("dir_cache=no", "attr_timeout=0", "entry_timeout=0")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A tree of 60 real images, to be served over sshfs."""
    root = tmp_path / "export"
    make_demo_tree(root, count=60)
    return root


def _sshfs(tmp_path: Path, export: Path, *options: str, readonly: bool = True) -> Any:
    return SshfsMount.start(
        export, tmp_path / "mnt", tmp_path / "ssh", readonly=readonly, extra_options=options
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_nothing_partial(out: Path) -> None:
    """Only finished files in outputs, and every tar the metadata names is intact."""
    assert not [p for p in out.iterdir() if p.name.endswith((".partial", ".tmp"))]
    if not (out / "valohai.metadata.jsonl").exists():
        assert not list(out.glob("*.tar"))
        return
    listed = {m["file"]: m for m in read_metadata(out)}
    for tar in out.glob("*.tar"):
        assert tar.name in listed, f"{tar.name} is in outputs but not in the metadata"
        assert listed[tar.name]["metadata"]["sha256"] == _sha256(tar)


@needs_sshfs
def test_check_accepts_sshfs_as_a_read_only_network_mount(tmp_path: Path, export: Path) -> None:
    with _sshfs(tmp_path, export) as mnt:
        proc = run_cli(
            "check", RESIZE_JOB, "--source", mnt.mountpoint, "--strict-mounts", cwd=tmp_path
        )
    assert proc.returncode == 0, proc.stderr
    assert f"{mnt.mountpoint} (fuse.sshfs root@127.0.0.1:{export}, network)" in proc.stdout
    assert re.search(r"(?m)^  read-only +yes$", proc.stdout), proc.stdout


@needs_sshfs
def test_a_read_write_sshfs_mount_is_refused(tmp_path: Path, export: Path) -> None:
    with _sshfs(tmp_path, export, readonly=False) as mnt:
        proc = run_cli(
            "run",
            RESIZE_JOB,
            "--source",
            mnt.mountpoint,
            "--outputs",
            tmp_path / "out",
            cwd=tmp_path,
        )
    assert proc.returncode == 2
    assert f"source {mnt.mountpoint} is on a read-write mount" in proc.stderr
    assert not (tmp_path / "out").exists()


@needs_sshfs
def test_a_run_over_sshfs_gives_the_same_samples_as_over_the_local_directory(
    tmp_path: Path, export: Path
) -> None:
    common = ("--shard-max-files", "25", "--workers", "2")
    with _sshfs(tmp_path, export) as mnt:
        over_net = run_cli(
            "run",
            RESIZE_JOB,
            "--source",
            mnt.mountpoint,
            "--outputs",
            tmp_path / "net",
            "--strict-mounts",
            *common,
            cwd=tmp_path,
        )
    assert over_net.returncode == 0, over_net.stderr
    local = run_cli(
        "run",
        RESIZE_JOB,
        "--source",
        export,
        "--outputs",
        tmp_path / "local",
        *common,
        cwd=tmp_path,
    )
    assert local.returncode == 0, local.stderr
    assert len(tar_digests(tmp_path / "net")) == 3
    net, here = _samples(tmp_path / "net"), _samples(tmp_path / "local")
    assert list(net) == list(here)  # the same members in the same tars, in the same order
    for name, data in net.items():
        if not name.endswith(".json"):
            assert data == here[name], name
            continue
        # SFTP (v3) carries whole seconds: sshfs shows the same mtime truncated
        record, local_record = json.loads(data), json.loads(here[name])
        assert record["mtime_ns"] == local_record["mtime_ns"] // 10**9 * 10**9
        assert {**record, "mtime_ns": 0} == {**local_record, "mtime_ns": 0}


def _samples(outputs: Path) -> dict[str, bytes]:
    """``{"tar/member": bytes}`` over every published tar, in order."""
    found = {}
    for tar in sorted(outputs.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for info in tf:
                f = tf.extractfile(info)
                assert f is not None
                found[f"{tar.name}/{info.name}"] = f.read()
    return found


def _start_run(tmp_path: Path, source: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "mountproc", "run", str(RESIZE_JOB), "--source", str(source),
        "--outputs", str(tmp_path / "out"), "--shard-max-files", "4", "--workers", "1",
        *extra,
    ]  # fmt: skip
    # output to files, not pipes: a worker left blocked on a hung mount keeps a pipe open after
    # mountproc has exited
    with (tmp_path / "run.out").open("w") as out, (tmp_path / "run.err").open("w") as err:
        return subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=out, stderr=err)


def _ended(tmp_path: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait for the run to exit; return its stderr."""
    proc.wait(timeout=timeout)
    return (tmp_path / "run.err").read_text()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Runs started by a test; killed at teardown if the test left one running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _when_a_tar_is_published(tmp_path: Path, proc: subprocess.Popen[bytes]) -> None:
    wait_until(
        lambda: proc.poll() is not None or any((tmp_path / "out").glob("*.tar")),
        120,
        "the first published tar",
    )
    assert proc.poll() is None, "the run ended before the fault could be injected"


@needs_sshfs
@pytest.mark.parametrize(
    "options",
    [pytest.param((), id="mount-vanishes"), pytest.param(("reconnect",), id="mount-stays-eio")],
)
def test_killing_the_server_mid_run_ends_the_run_with_a_clear_error(
    tmp_path: Path, export: Path, options: tuple[str, ...], started: list[Any]
) -> None:
    with _sshfs(tmp_path, export, *options, *NO_CACHE) as mnt:
        proc = _start_run(tmp_path, mnt.mountpoint, "--strict-mounts")
        started.append(proc)
        _when_a_tar_is_published(tmp_path, proc)
        mnt.kill_server()
        killed = time.monotonic()
        stderr = _ended(tmp_path, proc, 120)
        took = time.monotonic() - killed
    assert proc.returncode == 1, stderr
    assert f"source {mnt.mountpoint}" in stderr
    assert "Traceback" not in stderr, stderr
    assert took < 90
    _assert_nothing_partial(tmp_path / "out")
    assert 1 <= len(list((tmp_path / "out").glob("*.tar"))) < 15


@needs_sshfs
def test_a_hung_mount_mid_run_ends_the_run_within_the_time_limits(
    tmp_path: Path, export: Path, started: list[Any]
) -> None:
    """The server stops answering (sshfs stopped, like a hard NFS mount whose server hangs):
    the per-file watchdog restarts the worker, whose mount check times out."""
    with _sshfs(tmp_path, export, *NO_CACHE) as mnt:
        proc = _start_run(
            tmp_path, mnt.mountpoint, "--strict-mounts", "--file-timeout", "4",
            "--mount-timeout", "3",
        )  # fmt: skip
        started.append(proc)
        _when_a_tar_is_published(tmp_path, proc)
        mnt.pause_client()
        paused = time.monotonic()
        try:
            stderr = _ended(tmp_path, proc, 120)
        finally:
            mnt.resume_client()
        took = time.monotonic() - paused
    assert proc.returncode == 1, stderr
    assert f"source {mnt.mountpoint} is not answering (no answer within 3 s)" in stderr
    assert "Traceback" not in stderr, stderr
    assert took < 60
    _assert_nothing_partial(tmp_path / "out")


@needs_sshfs
def test_check_on_a_hung_mount_fails_within_the_mount_timeout(tmp_path: Path, export: Path) -> None:
    with _sshfs(tmp_path, export, *NO_CACHE) as mnt:
        mnt.pause_client()
        try:
            start = time.monotonic()
            proc = run_cli(
                "check", RESIZE_JOB, "--source", mnt.mountpoint, "--mount-timeout", "2",
                cwd=tmp_path, timeout=60,
            )  # fmt: skip
            took = time.monotonic() - start
        finally:
            mnt.resume_client()
    assert proc.returncode == 2, proc.stderr
    assert f"source {mnt.mountpoint} is not answering (no answer within 2 s)" in proc.stderr
    assert took < 30


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path, bind_mount: Any) -> Iterator[Path]:
    """A 192 KiB tmpfs (``bind_mount`` only for its root check), unmounted at teardown."""
    target = tmp_path / "tiny"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tiny", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_scratch_disk_ends_the_run_with_a_clear_error(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=48)
    out = tmp_path / "out"
    proc = run_cli(
        "run", RESIZE_JOB, "--source", src, "--outputs", out, "--scratch", small_tmpfs,
        "--min-free-space", "0", "--shard-max-files", "6", "--workers", "1", "--size", "512",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"scratch directory {small_tmpfs}/resize-images/shards is full (ENOSPC" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_nothing_partial(out)


def test_too_little_free_space_fails_the_preflight(tmp_path: Path, small_tmpfs: Path) -> None:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    proc = run_cli(
        "run", RESIZE_JOB, "--source", src, "--outputs", tmp_path / "out", "--scratch",
        small_tmpfs / "scratch", "--min-free-space", "1MiB", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"scratch directory {small_tmpfs}/scratch has 192.0 KiB free, less than" in proc.stderr
    assert "--min-free-space=1.0 MiB" in proc.stderr
    assert not (tmp_path / "out").exists()
