"""The embedded cluster's workers are forked from a warm fork server, yet see what a spawned
worker would: the driver's environment at the time of the run and the nanny's pre-spawn
variables."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

import mountproc
from mountproc._cluster import warm

JOB = """
import json, os, sys
from mountproc import Context, Job, SourceFile

job = Job(name="whoami")


@job.transform
def whoami(src: SourceFile, ctx: Context[object]) -> dict[str, bytes]:
    parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read().replace(b"\\0", b" ")
    seen = {
        "parent": parent.decode(errors="replace"),
        "late": os.environ.get("MOUNTPROC_TEST_SET_LATE"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "preloaded": "mountproc._shard.worker" in sys.modules,
    }
    return {"seen.json": json.dumps(seen).encode()}
"""


def _seen(outputs: Path) -> list[dict[str, object]]:
    seen = []
    for tar in sorted(outputs.glob("whoami-*.tar")):
        with tarfile.open(tar) as t:
            for member in t.getmembers():
                if member.name.endswith(".seen.json"):
                    seen.append(json.loads(t.extractfile(member).read()))  # type: ignore[union-attr]
    return seen


@pytest.mark.cluster
def test_workers_are_forked_warm_with_the_drivers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert warm.available()
    warm.warm_up()  # as `mountproc run` does before it imports Dask; the run reuses it
    monkeypatch.setenv("MOUNTPROC_TEST_SET_LATE", "after the server started")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.txt").write_text(str(i))
    job = tmp_path / "whoami.py"
    job.write_text(JOB)
    out = tmp_path / "out"
    mountproc.run(str(job), source=src, outputs=out, scratch=tmp_path / "s", workers=2)
    seen = _seen(out)
    assert len(seen) == 4, seen
    for record in seen:
        assert "multiprocessing.forkserver" in str(record["parent"]), record
        assert record["preloaded"] is True
        assert record["late"] == "after the server started"
        assert record["omp"] == "1"  # the nanny's pre-spawn variable, as for a spawned worker
        assert record["mmap"] == warm.MALLOC["MALLOC_MMAP_THRESHOLD_"]
    assert os.environ.get("MOUNTPROC_TEST_SET_LATE") == "after the server started"


def test_the_environment_a_forked_worker_lacks_is_named() -> None:
    warm.warm_up()
    os.environ["MOUNTPROC_TEST_CHANGED"] = "x"
    try:
        assert warm.changed_environ()["MOUNTPROC_TEST_CHANGED"] == "x"
    finally:
        del os.environ["MOUNTPROC_TEST_CHANGED"]
    assert "MOUNTPROC_TEST_CHANGED" not in warm.changed_environ()
    assert warm.matches(warm.PRE_SPAWN)
    assert not warm.matches({"OMP_NUM_THREADS": "8"})


def _worker_environ(client: Any, name: str) -> list[str | None]:
    return sorted(client.run(os.environ.get, name).values(), key=str)


def _forked(client: Any) -> list[bool]:
    parents = client.run(lambda: Path(f"/proc/{os.getppid()}/cmdline").read_bytes())
    return [b"multiprocessing.forkserver" in p for p in parents.values()]


@pytest.mark.cluster
@pytest.mark.parametrize(("omp", "forked"), [("1", True), ("2", False)])
def test_workers_get_mountprocs_glibc_thresholds(
    monkeypatch: pytest.MonkeyPatch, omp: str, forked: bool
) -> None:
    """Forked, or spawned because the config asks the nanny for other variables, the embedded
    workers run with ``warm.MALLOC``, not distributed's 64 KiB trim threshold alone."""
    import dask

    from mountproc._cluster.client import ClusterOptions, open_cluster

    for name in [*warm.MALLOC, "OMP_NUM_THREADS"]:  # a nanny sets them in its parent too
        monkeypatch.delenv(name, raising=False)
    warm.warm_up()
    pre_spawn = {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": omp}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}),
        open_cluster(ClusterOptions(workers=2)) as client,
    ):
        assert _forked(client) == [forked] * 2
        assert _worker_environ(client, "OMP_NUM_THREADS") == [omp] * 2
        for name, value in warm.MALLOC.items():
            assert _worker_environ(client, name) == [value] * 2


@pytest.mark.cluster
def test_a_trim_threshold_of_the_users_config_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask

    from mountproc._cluster.client import ClusterOptions, open_cluster

    for name in warm.MALLOC:
        monkeypatch.delenv(name, raising=False)
    chosen = {"MALLOC_TRIM_THRESHOLD_": "1048576", "OMP_NUM_THREADS": "1"}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": chosen}),
        open_cluster(ClusterOptions(workers=1)) as client,
    ):
        assert _worker_environ(client, "MALLOC_TRIM_THRESHOLD_") == ["1048576"]
        assert _worker_environ(client, "MALLOC_MMAP_THRESHOLD_") == [None]


def test_pre_spawn_replaces_only_distributeds_default_trim() -> None:
    default = {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1}
    assert warm.pre_spawn(default) == {**default, **warm.MALLOC}
    assert warm.pre_spawn({"OMP_NUM_THREADS": 1}) == {"OMP_NUM_THREADS": 1}
    own_mmap = {"MALLOC_TRIM_THRESHOLD_": 65536, "MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert warm.pre_spawn(own_mmap) == own_mmap


def _config(client: Any, key: str) -> list[object]:
    import dask

    return sorted(client.run(dask.config.get, key).values(), key=str)


@pytest.mark.cluster
def test_the_monitors_are_slower_unless_the_config_chose() -> None:
    """The embedded cluster's workers check their event loop and memory at
    ``SLOWER_MONITORS``' pace; an interval the user's config set is kept."""
    import dask

    from mountproc._cluster.client import SLOWER_MONITORS, ClusterOptions, open_cluster

    tick, memory = "distributed.admin.tick.interval", "distributed.worker.memory.monitor-interval"
    with dask.config.set({tick: "50ms"}), open_cluster(ClusterOptions(workers=2)) as client:
        assert _config(client, tick) == ["50ms"] * 2
        assert _config(client, memory) == [SLOWER_MONITORS[memory][1]] * 2
    assert dask.config.get(memory) == SLOWER_MONITORS[memory][0]  # this process's is restored


PROBE = """
import atexit, os

_fd = os.open({marks!r}, os.O_WRONLY | os.O_APPEND)
atexit.register(os.write, _fd, b"atexit ran\\n")


class _Teardown:
    def __del__(self, write=os.write, fd=_fd):
        write(fd, b"teardown ran\\n")


_teardown = _Teardown()
"""

DRIVER = """
import sys
from mountproc._cluster import warm

warm.PRELOAD = (*warm.PRELOAD, "mountproc_test_probe")
warm.warm_up()
from multiprocessing import forkserver

forkserver.ensure_running()  # the server has preloaded once it answers
print("server", forkserver._forkserver._forkserver_pid, flush=True)
"""


def test_the_fork_server_exits_without_tearing_down_what_it_imported(tmp_path: Path) -> None:
    """The server keeps the driver's stdout and stderr until it ends: with Dask imported, its
    interpreter teardown held a pipe reading the run's output open for a fifth of a second
    after the run ended. It runs its exit handlers, then leaves without the teardown."""
    import subprocess
    import sys

    marks = tmp_path / "marks"
    marks.touch()
    (tmp_path / "mountproc_test_probe.py").write_text(PROBE.format(marks=str(marks)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    # the pipe reaches its end once every holder, the server among them, has exited
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("server "), done.stdout
    assert marks.read_text().splitlines() == ["atexit ran"]


def test_only_the_fork_server_imports_its_exit() -> None:
    """In the driver or a worker, ``server_exit``'s handler would cut an exit with work left."""
    import subprocess
    import sys

    code = (
        "import sys, mountproc._runner, mountproc._cli.run, mountproc._cluster.feed; "
        "print('mountproc._cluster.server_exit' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
    assert warm.PRELOAD[0] == "mountproc._cluster.server_exit"  # first: its handler runs last
