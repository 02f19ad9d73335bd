"""The Ray Data row of ``bench_peers``: never installed by a smoke run, skipped with the reason
where Ray Data cannot be installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO

if str(REPO) not in sys.path:  # the benchmarks package lives beside mountproc, not in it
    sys.path.insert(0, str(REPO))

from benchmarks import bench_peers
from benchmarks.common import Config


def test_a_smoke_run_skips_ray_and_installs_nothing(tmp_path: Path) -> None:
    row = bench_peers.against_ray(Config(tmp_path, smoke=True))
    assert row.skipped.startswith("smoke run")
    assert not row.baseline_s
    assert not row.ours_s
    assert not row.error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ray_that_cannot_be_installed_is_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip with no index and no local wheels of Ray: what an install without a network meets
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    python, why = bench_peers.ray_python(tmp_path / "venv-ray")
    assert python is None
    assert why.startswith("Ray Data did not install (pip install ray[data]==")
    assert "No matching distribution" in why
    assert not (tmp_path / "venv-ray" / "installed.txt").exists()
