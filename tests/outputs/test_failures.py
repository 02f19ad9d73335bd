"""Failures a person can act on: each failed file's traceback in the manifest (the job file's
frames kept), the failures grouped in the summary and the final table, ``mountproc report`` and
``mountproc.manifest`` reading them back, and messages that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import RESIZE_JOB, run_cli

import mountproc
from mountproc import FailureBudgetExceeded
from mountproc._demo_data import BAD_FILES, make_demo_tree

HELPER_JOB = """\
from mountproc import Context, Job, SourceFile

job = Job(name="labels", include=["*.jpg", "*.png"])


def label_of(src: SourceFile) -> str:
    meta = {"path": src.relpath}
    return meta["label"]  # the bug: deep in a helper


@job.transform
def transform(src: SourceFile, ctx: Context) -> dict[str, bytes]:
    if src.relpath.endswith(".png"):
        return {"txt": b"fine"}
    return {"txt": label_of(src).encode()}
"""


@pytest.fixture
def failing_run(tmp_path: Path) -> tuple[Path, Path, Any]:
    """A run whose transform fails every JPEG with a KeyError from a helper."""
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo_tree(src, count=12)
    job = tmp_path / "labels.py"
    job.write_text(HELPER_JOB)
    with pytest.raises(FailureBudgetExceeded) as raised:
        mountproc.run(job, source=src, outputs=out, workers=1, shard_max_files=4, keep_going=True)
    return job, out, raised.value


@pytest.mark.cluster
def test_a_failed_file_keeps_its_traceback_down_to_the_job_files_line(
    failing_run: tuple[Path, Path, Any],
) -> None:
    job, out, _ = failing_run
    frame = mountproc.manifest(out)
    failed = frame[frame["status"] == "failed"]
    assert len(failed) > 0
    assert set(failed["error"]) == {"KeyError: 'label'"}
    trace = failed["traceback"].iloc[0]
    assert trace.startswith("Traceback (most recent call last):")
    assert f'File "{job}", line 8, in label_of' in trace
    assert 'return meta["label"]' in trace
    assert "mountproc/_shard" not in trace  # mountproc's own frames are left out
    assert frame[frame["status"] == "ok"]["traceback"].isna().all()


@pytest.mark.cluster
def test_failures_are_grouped_in_the_summary_and_the_error(
    failing_run: tuple[Path, Path, Any],
) -> None:
    _, out, error = failing_run
    summary = error.report.summary
    frame = mountproc.manifest(out)
    failed = frame[frame["status"] == "failed"]
    assert summary["failures"] == [
        {"error": "KeyError: 'label'", "files": len(failed), "example": failed["path"].iloc[0]}
    ]
    message = str(error)
    assert f"the commonest: KeyError: 'label' ({len(failed)} files, e.g. " in message
    assert message.endswith(f"details: mountproc report {out}")


@pytest.mark.cluster
def test_report_reads_the_outputs_back(failing_run: tuple[Path, Path, Any]) -> None:
    _, out, _ = failing_run
    proc = run_cli("report", out, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    frame = mountproc.manifest(out)
    failed = int((frame["status"] == "failed").sum())
    ok = int((frame["status"] == "ok").sum())
    lines = proc.stdout.splitlines()
    assert lines[0] == "job         labels"
    assert f"files       {ok} ok, {failed} failed, 0 skipped, " in proc.stdout
    assert any(line.strip().startswith(f"{failed}  KeyError: 'label'  (e.g. ") for line in lines)
    start = lines.index("by top-level folder (files, bytes, failed):") + 1
    folders = lines[start : lines.index("", start)]
    assert sum(int(line.split()[0].replace(",", "")) for line in folders) == ok + failed


def test_report_without_outputs_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("report", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mountproc: error: {tmp_path}: no mountproc manifest (<job>-manifest.parquet) is not there"
    ]


@pytest.mark.cluster
def test_an_image_that_cannot_be_read_is_named_not_its_buffer(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo_tree(src, count=12, bad=True)
    mountproc.run(RESIZE_JOB, source=src, outputs=out, workers=1, max_failures="100%")
    frame = mountproc.manifest(out)
    errors = frame[frame["status"] == "failed"].set_index("path")["error"].to_dict()
    assert set(errors) == set(BAD_FILES)
    assert not any("BytesIO" in e for e in errors.values())
    for path in ("clinic-a/2024-02/corrupt.jpg", "clinic-c/notes.jpg"):
        assert f"cannot identify image file {path!r}" in errors[path], errors[path]
