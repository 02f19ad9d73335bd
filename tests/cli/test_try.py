"""``mountproc try``: setup and the transform on a few files, in this process, nothing
published; outputs described, a failure's traceback down to the job file's line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import RESIZE_JOB, run_cli

from mountproc._demo_data import make_demo_tree

HELPER_JOB = """\
from mountproc import Context, Job, SourceFile

job = Job(name="labels", include=["*.jpg"])


def label_of(src: SourceFile) -> str:
    return {"path": src.relpath}["label"]


@job.transform
def transform(src: SourceFile, ctx: Context) -> dict[str, bytes]:
    return {"txt": label_of(src).encode()}
"""


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    return src


def test_outputs_are_described_and_nothing_is_written(photos: Path, tmp_path: Path) -> None:
    jpeg = next(photos.rglob("IMG_*.jpg"))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("try", RESIZE_JOB, jpeg, "--size=64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    key = jpeg.name.replace(".", "%2E")
    assert lines[0] == str(jpeg)
    assert lines[1].startswith(f"  {key}.jpg  ")
    assert lines[1].endswith(", JPEG 64x48 RGB")
    assert lines[2].startswith(f"  {key}.json  ")
    assert f'"path": "{jpeg.name}"' in lines[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no outputs, no scratch


def test_a_helpers_keyerror_shows_the_traceback_to_the_job_files_line(
    photos: Path, tmp_path: Path
) -> None:
    job = tmp_path / "labels.py"
    job.write_text(HELPER_JOB)
    jpeg = next(photos.rglob("*.jpg"))
    proc = run_cli("try", job, jpeg, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:3] == [
        str(jpeg),
        "  FAILED",
        "Traceback (most recent call last):",
    ]
    assert f'File "{job}", line 7, in label_of' in proc.stdout
    assert proc.stdout.rstrip().endswith("KeyError: 'label'")
    assert proc.stderr.strip().splitlines()[-1] == "mountproc: error: 1 of 1 file(s) failed"


@pytest.mark.cluster
def test_failed_in_replays_a_runs_failed_files(photos: Path, tmp_path: Path) -> None:
    job = tmp_path / "labels.py"
    job.write_text(HELPER_JOB)
    out = tmp_path / "out"
    ran = run_cli("run", job, "--source", photos, "--outputs", out, "--workers", "1", cwd=tmp_path)
    assert ran.returncode == 1
    fixed = tmp_path / "fixed.py"
    fixed.write_text(HELPER_JOB.replace('["label"]', '.get("label", "none")'))
    proc = run_cli("try", fixed, "--failed-in", out, "--limit", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tried = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert len(tried) == 3
    assert all(Path(line).is_file() and Path(line).is_relative_to(photos) for line in tried)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("try", RESIZE_JOB, tmp_path / "nope.jpg", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"mountproc: error: no such file: {tmp_path / 'nope.jpg'}"
