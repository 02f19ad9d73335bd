"""The code base stays ruff-clean, formatted, and mypy --strict clean."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.parametrize(
    "cmd",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_static_checks(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", *cmd], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_api_is_exactly_all() -> None:
    import mountproc

    public = {n for n in dir(mountproc) if not n.startswith("_")} - {"annotations"}
    assert public == set(mountproc.__all__) - {"__version__"}
    for name in public:  # each imported on first use
        assert getattr(mountproc, name).__module__.startswith("mountproc."), name
    with pytest.raises(AttributeError, match="no attribute 'Jobs'"):
        _ = mountproc.Jobs
