"""Fail fast: a transform that fails every file stops the run after a few of them; failures
past --max-failures stop it too; --keep-going processes everything anyway; what is complete is
published either way, and the error names the reason and where the tracebacks are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli, tar_digests
from helpers.pinned import JOB, PINNED, make_tree

import mountproc
from mountproc import FailureBudgetExceeded
from mountproc._demo_data import make_demo_tree
from mountproc._records import NOT_PROCESSED

BROKEN_JOB = """\
from mountproc import Job

job = Job(name="broken", include=["*.jpg", "*.png"])


def label_of(src):
    return {"path": src.relpath}["label"]


@job.transform
def transform(src, ctx):
    return {"txt": label_of(src).encode()}
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    src = tmp_path_factory.mktemp("photos")
    return src, len(make_demo_tree(src, count=2000, size=(96, 72)))


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.parametrize(
    ("budget", "said"),
    [
        ("1%", "files failed, more than --max-failures=1% (stopped early): "),
        ("100%", "stopped early: "),  # the budget allows it all: the first files tell
    ],
)
def test_a_transform_failing_every_photo_stops_within_five_percent(
    tmp_path: Path, photos: tuple[Path, int], budget: str, said: str
) -> None:
    src, count = photos
    out = tmp_path / "out"
    job = tmp_path / "broken.py"
    job.write_text(BROKEN_JOB)
    proc = run_cli(
        "run", job, "--source", src, "--outputs", out, "--workers", "2", "--max-failures", budget,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("mountproc: error: ")
    assert said in error
    assert "KeyError: 'label'" in error  # the error, named
    assert f"--failed-in {out}" in error or f"mountproc report {out}" in error
    frame = mountproc.manifest(out)
    tried = frame[(frame["status"] == "failed") & (frame["error"] != NOT_PROCESSED)]
    assert 0 < len(tried) <= 0.05 * count
    assert set(tried["error"]) == {"KeyError: 'label'"}
    assert all(f'File "{job}", line 7, in label_of' in t for t in tried["traceback"])
    assert "\nstopped by  " in proc.stdout  # the table is still shown
    assert not list(out.glob("*.tar"))  # no shard was complete


def _pinned(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    src = tmp_path / "src"
    make_tree(src)
    job = tmp_path / "pinned.py"
    job.write_text(JOB)
    settings = {"source": src, "outputs": tmp_path / "out", "workers": 1, "shard_max_files": 3}
    return job, settings


@pytest.mark.cluster
def test_failures_past_the_budget_stop_the_run(tmp_path: Path) -> None:
    job, settings = _pinned(tmp_path)
    with pytest.raises(
        FailureBudgetExceeded, match=r"more than --max-failures=0 \(stopped early\)"
    ):
        mountproc.run(job, max_failures=0, **settings)


@pytest.mark.cluster
def test_keep_going_processes_every_file_past_the_budget(tmp_path: Path) -> None:
    job, settings = _pinned(tmp_path)
    with pytest.raises(FailureBudgetExceeded) as raised:
        mountproc.run(job, max_failures=0, keep_going=True, **settings)
    assert "stopped early" not in str(raised.value)
    assert "no dataset version registered" in str(raised.value)
    assert tar_digests(tmp_path / "out") == PINNED


@pytest.mark.cluster
def test_test_mode_says_what_a_full_run_would_do(tmp_path: Path) -> None:
    job, settings = _pinned(tmp_path)
    with pytest.raises(FailureBudgetExceeded) as raised:
        mountproc.run(job, max_failures=0, keep_going=True, test_mode=True, **settings)
    message = str(raised.value)
    assert "a full run would fail the same way" in message
    assert "dataset" not in message


@pytest.mark.cluster
def test_a_transform_returning_bytes_stops_early_and_publishes_no_tar(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo_tree(src, count=60, size=(64, 48))
    job = tmp_path / "bytes.py"
    job.write_text(BROKEN_JOB.replace('{"txt": label_of(src).encode()}', 'b"not a mapping"'))
    with pytest.raises(mountproc.StoppedEarly) as raised:
        mountproc.run(job, source=src, outputs=out, workers=1, max_failures="100%")
    assert "TypeError: transform must return a mapping of suffix to content, not bytes" in str(
        raised.value
    )
    assert not list(out.glob("*.tar"))  # no empty tar published
    assert raised.value.report.summary["files_failed"] <= 25
