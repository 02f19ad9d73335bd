"""The tars of a fixed tree are pinned byte for byte: a restructuring must not change them."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli, tar_digests
from helpers.pinned import JOB, PINNED, make_tree


@pytest.mark.cluster
def test_tars_of_a_fixed_tree_are_pinned(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    job = tmp_path / "pinned.py"
    job.write_text(JOB)
    proc = run_cli(
        "run", job, "--source", src, "--outputs", out, "--scratch", tmp_path / "scratch",
        "--shard-max-files", "3", "--workers", "1", "--max-failures", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert tar_digests(out) == PINNED
