"""Fixtures the tests share (helpers they import live in ``helpers``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_hostile_tree


@pytest.fixture
def hostile_tree(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A source tree in ``tmp_path/src`` and facts about its odd entries."""
    src = tmp_path / "src"
    facts = make_hostile_tree(src, tmp_path / "outside")
    return src, facts


def _can_bind_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create bind mounts"
    if shutil.which("mount") is None:
        return "the mount command is missing"
    return None


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Any]:
    """A function that bind-mounts a directory (read-only or not); unmounted at teardown."""
    reason = _can_bind_mount()
    if reason:
        pytest.skip(reason)
    mounted: list[Path] = []

    def mount(src: Path, dest: Path, readonly: bool = True) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(src), str(dest)], check=True)
        mounted.append(dest)
        if readonly:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(dest)], check=True)
        return dest

    yield mount
    for dest in reversed(mounted):
        if subprocess.run(["umount", str(dest)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(dest)], check=False)
