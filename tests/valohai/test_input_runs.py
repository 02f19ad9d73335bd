"""``mountproc run --input NAME`` end to end: the real CLI and a real LocalCluster, an on-demand
input served by a real HTTP server on 127.0.0.1 (``helpers.inputserver``), ``inputs.json`` and
``api.json`` in a config directory named by ``VH_CONFIG_DIR``."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import read_manifest, run_cli
from helpers.inputserver import InputServer, Store, iter_files, write_valohai_config

from mountproc._job import DEFAULT_EXCLUDES
from mountproc._listing.dirscan import Patterns
from mountproc._listing.testmode import write_test_listing

COPY_JOB = '''
"""Copies each file into its sample: what the worker got, byte for byte."""
from mountproc import Job

job = Job(name="copy")


@job.transform
def copy(src, ctx):
    return {"bin": src.read_bytes(), "sha.txt": src.sha256}
'''
OPTIONS = ("--shard-max-files", "3", "--workers", "2", "--max-failures", "0")


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "copy_job.py"
    path.write_text(textwrap.dedent(COPY_JOB))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files in folders (mtime 0: inputs.json gives none, so an on-demand file's is 0)."""
    root = tmp_path / "tree"
    names = ["a.bin", "a/z.bin", "a/b/c.bin", "a-b/x.bin", "b/1.bin", "b/2.bin", "b/3.bin"]
    names += [f"c/{i:02d}.bin" for i in range(5)]
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(2000 + 500 * i))
        os.utime(path, ns=(0, 0))
    return root


def _samples(outputs: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Every tar's members, names and bytes, in order."""
    out = {}
    for path in sorted(outputs.glob("*.tar")):
        with tarfile.open(path) as tar:
            out[path.name] = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    return out


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "VH_CONFIG_DIR": str(tmp_path / "config"),
        "VH_INPUTS_DIR": str(tmp_path / "inputs"),
        **extra,
    }


@pytest.mark.cluster
def test_an_on_demand_run_gives_the_samples_of_a_run_over_the_same_files(
    tmp_path: Path, job: Path, tree: Path
) -> None:
    files = dict(iter_files(tree))
    failing, reset = sorted(files)[2], sorted(files)[5]
    # every URL expires once 4 files went out: the rest need renewed ones
    store = Store(files, expire_all_after=4, faults={failing: ["500"], reset: ["reset"]})
    with InputServer(store) as server:
        write_valohai_config(tmp_path / "config", server)
        remote = run_cli(
            "run", job, "--input", "images", "--outputs", tmp_path / "remote", *OPTIONS,
            cwd=tmp_path, env=_env(tmp_path, VH_JOB_ID="0190-job"),  # on Valohai: strict mounts
        )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    local = run_cli(
        "run", job, "--source", tree, "--outputs", tmp_path / "local", *OPTIONS, cwd=tmp_path
    )
    assert local.returncode == 0, local.stderr
    assert _samples(tmp_path / "remote") == _samples(tmp_path / "local")
    assert len(_samples(tmp_path / "remote")) == 4  # 12 files, 3 a shard
    assert store.served == {name: 1 for name in files}  # each downloaded whole exactly once
    assert sum(store.refused.values()) >= 1  # URLs did expire mid-run...
    assert store.renewals >= 1  # ...and were renewed
    assert store.requests[failing] >= 2  # the 500 was retried
    assert store.requests[reset] >= 2  # the reset connection too
    listed = json.loads((tmp_path / "config" / "inputs.json").read_text())["images"]["files"]
    datums = {f["name"]: f["uri"] for f in listed}
    rows = read_manifest(tmp_path / "remote", "copy")
    assert {r["path"]: r["datum"] for r in rows} == datums
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["datum"] for r in read_manifest(tmp_path / "local", "copy")} == {None}


@pytest.mark.cluster
def test_test_mode_downloads_only_its_subset(tmp_path: Path, job: Path, tree: Path) -> None:
    store = Store(dict(iter_files(tree)))
    with InputServer(store) as server:
        write_valohai_config(tmp_path / "config", server)
        proc = run_cli(
            "run", job, "--input", "images", "--outputs", tmp_path / "out", "--test-mode",
            "--test-size", "4", *OPTIONS, cwd=tmp_path, env=_env(tmp_path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    crawled = tmp_path / "subset.parquet"
    patterns = Patterns(["*"], [], DEFAULT_EXCLUDES)
    write_test_listing(tree, patterns, crawled, 4, lambda exc: None)
    subset = pq.read_table(crawled).column("path").to_pylist()
    assert len(subset) == 4
    assert sorted(store.requests) == sorted(subset)  # nothing else was asked for
    assert set(store.served.values()) == {1}
    rows = read_manifest(tmp_path / "out" / "test-mode", "copy")
    assert sorted(r["path"] for r in rows if r["status"] == "ok") == sorted(subset)


@pytest.mark.cluster
def test_a_downloaded_input_on_valohai_passes_the_checks(
    tmp_path: Path, job: Path, tree: Path
) -> None:
    copy = tmp_path / "inputs" / "images"
    shutil.copytree(tree, copy)
    with InputServer(Store(dict(iter_files(tree)))) as server:  # for inputs.json's entries only
        write_valohai_config(
            tmp_path / "config", server, intent="always", inputs_dir=tmp_path / "inputs"
        )
    env = _env(tmp_path, VH_JOB_ID="0190-job")
    as_mount = run_cli(
        "check", job, "--source", copy, "--outputs", tmp_path / "o", cwd=tmp_path, env=env
    )
    assert as_mount.returncode == 2  # the same directory named as --source is no mount
    assert "is not a mount point" in as_mount.stderr
    proc = run_cli(
        "run", job, "--input", "images", "--outputs", tmp_path / "out", *OPTIONS,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Valohai input images" in proc.stderr
    assert "not a mount point" not in proc.stderr
    rows = read_manifest(tmp_path / "out", "copy")
    assert len(rows) == 12
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["datum"].startswith("datum://") for r in rows)


@pytest.mark.parametrize("command", ["run", "check"])
def test_an_input_the_execution_lacks_is_one_clear_line(
    tmp_path: Path, job: Path, tree: Path, command: str
) -> None:
    with InputServer(Store(dict(iter_files(tree)))) as server:
        write_valohai_config(tmp_path / "config", server)
    proc = run_cli(
        command, job, "--input", "photos", "--outputs", tmp_path / "out", cwd=tmp_path,
        env=_env(tmp_path, VH_JOB_ID="0190-job"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "--input photos: this execution has no input of that name (its inputs: images)" in line
    assert not (tmp_path / "out").exists()
