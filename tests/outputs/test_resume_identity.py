"""Resume that explains itself: a refusal names each change as ``name: old -> new``; the job's
comments and formatting and the source's spelling are no change; test-mode and full runs keep
states and outputs of their own, so switching between them needs no --fresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import RESIZE_JOB, run_cli

from mountproc._demo_data import make_demo_tree

pytestmark = pytest.mark.cluster


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    return src


def _run(job: Path, src: Path | str, out: Path, *extra: str) -> tuple[int, str]:
    proc = run_cli(
        "run", job, "--source", src, "--outputs", out, "--shard-max-files", "4", "--workers", "1",
        *extra, cwd=out.parent,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "resize-images-summary.json").read_text())
    return data


def test_test_full_test_full_needs_no_fresh(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for extra in (["--test-mode", "--test-size", "5"], [], ["--test-mode", "--test-size", "5"]):
        code, stderr = _run(RESIZE_JOB, tree, out, *extra)
        assert code == 0, stderr
    full = _summary(out)
    assert (full["shards"], full["shards_reused"]) == (3, 0)
    assert _summary(out / "test-mode")["shards_reused"] == 2  # the second test run resumed
    code, stderr = _run(RESIZE_JOB, tree, out)
    assert code == 0, stderr
    assert _summary(out)["shards_reused"] == 3  # the full run resumed, untouched by test mode
    assert _summary(out)["attempts"] == 2


def test_a_refusal_names_each_change(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(RESIZE_JOB, tree, out)[0] == 0
    code, stderr = _run(RESIZE_JOB, tree, out, "--size=128", "--shard-max-bytes", "1MiB")
    assert code == 2
    error = stderr.strip().splitlines()[-1]
    assert "from a run with other settings (size: 224 -> 128; " in error
    assert "--shard-max-bytes: 1073741824 -> 1048576)" in error
    assert "Traceback" not in stderr


def test_comments_formatting_and_the_sources_spelling_are_no_change(
    tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = tmp_path / "resize.py"
    shutil.copyfile(RESIZE_JOB, job)
    assert _run(job, tree, out)[0] == 0
    text = job.read_text()
    edited = text.replace('"""', '"""My copy. ', 1).replace("\n\n\n", "\n\n\n\n")
    job.write_text(edited + "\n# a comment at the end\n")
    (tmp_path / "link").symlink_to(tree)
    code, stderr = _run(job, "link/../src", out)  # relative, and through a symlink's parent
    assert code == 0, stderr
    assert _summary(out)["shards_reused"] == 3
    job.write_text(text.replace("quality=", "quality= ").replace("def ", "def  ", 1))
    code, stderr = _run(job, tree, out, "--size=100")
    assert code == 2
    assert "the job file's code" not in stderr  # formatting only: the parameter is the change
    assert "size: 224 -> 100" in stderr


def test_a_rerun_notices_files_added_removed_and_changed(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(RESIZE_JOB, tree, out)[0] == 0
    jpegs = sorted(tree.rglob("*.jpg"))
    for name in ("new-1.jpg", "new-2.jpg"):
        shutil.copyfile(jpegs[0], jpegs[0].parent / name)
    jpegs[1].unlink()
    jpegs[2].write_bytes(jpegs[2].read_bytes() + b"\0")
    code, stderr = _run(RESIZE_JOB, tree, out)
    assert code == 0, stderr
    assert _summary(out)["source_changed"] == {"added": 2, "removed": 1, "changed": 1}
    assert "2 file(s) added, 1 removed, 1 changed; they are not in these outputs" in stderr
    assert "--fresh" in stderr


def test_a_rerun_of_an_unchanged_source_says_nothing_changed(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(RESIZE_JOB, tree, out)[0] == 0
    code, stderr = _run(RESIZE_JOB, tree, out)
    assert code == 0, stderr
    assert _summary(out)["source_changed"] == {"added": 0, "removed": 0, "changed": 0}
    assert "changed since" not in stderr
