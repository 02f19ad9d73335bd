"""A shared outputs directory: ``valohai.metadata.jsonl`` keeps every line a run did not write
(another job's, the user's own), through runs and ``--fresh``; two jobs in one outputs
directory each register their own files, and both verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import RESIZE_JOB, read_metadata, run_cli
from helpers.pinned import JOB, make_tree

from mountproc._demo_data import make_demo_tree

pytestmark = pytest.mark.cluster

FOREIGN = {"file": "my-report.html", "metadata": {"valohai.tags": ["report"], "author": "me"}}


def _run(job: Path, src: Path, out: Path, *extra: str) -> None:
    proc = run_cli("run", job, "--source", src, "--outputs", out, "--workers", "1",
                   "--max-failures", "1", *extra, cwd=out.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_a_foreign_line_survives_a_run_and_fresh(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo_tree(src, count=12)
    out.mkdir()
    (out / "my-report.html").write_text("<p>mine</p>")
    (out / "valohai.metadata.jsonl").write_text(json.dumps(FOREIGN) + "\n")
    _run(RESIZE_JOB, src, out)  # not refused: the line is not this job's
    assert read_metadata(out)[0] == FOREIGN
    _run(RESIZE_JOB, src, out, "--fresh", "--shard-max-files", "5")
    lines = read_metadata(out)
    assert lines[0] == FOREIGN
    assert (out / "my-report.html").read_text() == "<p>mine</p>"
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == [f"resize-images-{i:06d}.tar" for i in range(3)]  # the old ones replaced
    assert sorted(m["file"] for m in lines if m["file"].endswith(".tar")) == tars
    proc = run_cli("verify", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_jobs_in_one_outputs_directory_both_verify(tmp_path: Path) -> None:
    photos, texts, out = tmp_path / "photos", tmp_path / "texts", tmp_path / "out"
    make_demo_tree(photos, count=12)
    make_tree(texts)
    pinned = tmp_path / "pinned.py"
    pinned.write_text(JOB)
    _run(RESIZE_JOB, photos, out)
    _run(pinned, texts, out, "--shard-max-files", "3")
    jobs = {m["metadata"].get("mountproc.job") for m in read_metadata(out)}
    assert jobs == {"resize-images", "pinned"}
    _run(RESIZE_JOB, photos, out, "--fresh")  # replaces only its own files and lines
    files = {m["file"] for m in read_metadata(out)}
    assert {"pinned-000000.tar", "pinned-manifest.parquet", "resize-images-000000.tar"} <= files
    proc = run_cli("verify", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("verified 4 tars in ")
