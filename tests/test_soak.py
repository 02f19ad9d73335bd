"""Soak: 50,000 small files with injected failures and skips; the manifest must account for
every file exactly once, and the tars must hold exactly the outputs of the ok files."""

from __future__ import annotations

import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
from helpers import read_manifest, read_metadata, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DIRS, PER_DIR = 100, 500
JOB = """
import zlib
from mountproc import Job, Skip
job = Job(name='soak')

@job.transform
def copy(src, ctx):
    roll = zlib.crc32(src.relpath.encode()) % 100
    if roll < 2:
        raise ValueError(f'injected failure {roll}')
    if roll == 2:
        raise Skip('injected skip')
    return {'txt': src.read_bytes()}
"""


def _fate(relpath: str) -> str:
    """What the job does with a file: the same rule as the job's."""
    roll = zlib.crc32(relpath.encode()) % 100
    return "failed" if roll < 2 else "skipped" if roll == 2 else "ok"


def test_fifty_thousand_files_are_each_accounted_for_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(DIRS):
        folder = src / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(PER_DIR):
            (folder / f"{f:04d}.txt").write_bytes(b"%d/%d\n" % (d, f))
    job = tmp_path / "soak.py"
    job.write_text(JOB)
    out = tmp_path / "out"
    proc = run_cli(
        "run", job, "--source", src, "--outputs", out, "--workers", "2",
        "--shard-max-files", "2000", "--max-failures", "5%", cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_manifest(out, "soak")
    paths = [r["path"] for r in rows]
    assert len(paths) == DIRS * PER_DIR
    assert len(set(paths)) == len(paths)
    assert all(r["status"] == _fate(r["path"]) for r in rows)
    fates = Counter(r["status"] for r in rows)
    assert fates["failed"] > 500  # the injection did happen: about 2% of 50,000
    assert all("injected failure" in r["error"] for r in rows if r["status"] == "failed")
    where: dict[str, list[str]] = {}
    for tar in sorted(out.glob("soak-*.tar")):
        with tarfile.open(tar) as tf:
            for name in tf.getnames():
                where.setdefault(name, []).append(tar.name)
    # the outputs of the ok files and nothing else, each in exactly the tar the manifest names
    expected = {m: [r["tar"]] for r in rows if r["status"] == "ok" for m in r["members"]}
    assert where == expected
    tars = [m for m in read_metadata(out) if m["file"].endswith(".tar")]
    assert len(tars) == 25
    assert sum(m["metadata"]["files"] for m in tars) == fates["ok"]
