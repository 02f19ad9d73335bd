"""Helpers the tests share: the real ``mountproc`` CLI as a subprocess, trees with every kind of
trouble, and readers of what a run published. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mountproc._demo_data import make_demo_tree

REPO = Path(__file__).resolve().parents[2]
RESIZE_JOB = REPO / "jobs" / "resize_images.py"
NON_UTF8 = os.fsdecode(b"caf\xe9-scan.jpg")
_LEAKY_ENV = ("MOUNTPROC_", "VH_", "DASK_", "TEST_MODE")


def slow_job(seconds: float, name: str = "slow", include: tuple[str, ...] = ("*",)) -> str:
    """A job file's text whose transform sleeps ``seconds``, then copies the file: a run long
    enough to interrupt, lock or watch."""
    return (
        "import time\nfrom mountproc import Job\n\n"
        f"job = Job(name={name!r}, include={list(include)!r})\n"
        f"\n\n@job.transform\ndef transform(src, ctx):\n    time.sleep({seconds!r})\n"
        '    return {"txt": src.read_bytes()}\n'
    )


def make_sized_tree(root: Path, files: Mapping[str, int]) -> Path:
    """Create files (relative path -> size in bytes) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any mountproc, Valohai or Dask settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_ENV)}
    env.update(extra or {})
    return env


def run_cli(
    *args: object, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mountproc ARGS`` for real and capture its output."""
    cmd = [sys.executable, "-m", "mountproc", *map(str, args)]
    return subprocess.run(
        cmd, cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=timeout
    )


def make_hostile_tree(root: Path, outside: Path) -> dict[str, Any]:
    """A real image tree with every kind of trouble the crawl and the transform must survive."""
    make_demo_tree(root, count=24, bad=True)
    good = next(root.rglob("*.jpg"))
    shutil.copyfile(good, root / NON_UTF8)
    os.mkfifo(root / "clinic-a" / "pipe.jpg")
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(good, outside / "secret.jpg")
    os.symlink(outside / "secret.jpg", root / "clinic-a" / "link-outside.jpg")
    return {"fifo": "clinic-a/pipe.jpg", "symlink": "clinic-a/link-outside.jpg"}


def read_manifest(outputs: Path, job: str = "resize-images") -> list[dict[str, Any]]:
    """The manifest's rows as dicts."""
    rows: list[dict[str, Any]] = pq.read_table(outputs / f"{job}-manifest.parquet").to_pylist()
    return rows


def read_metadata(outputs: Path) -> list[dict[str, Any]]:
    """The lines of valohai.metadata.jsonl."""
    text = (outputs / "valohai.metadata.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def tar_digests(outputs: Path) -> dict[str, str]:
    """The sha256 of every published tar, by tar name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(outputs.glob("*.tar"))
    }


def tar_members(outputs: Path) -> dict[str, list[str]]:
    """Member names of every published tar, by tar name."""
    out = {}
    for tar in sorted(outputs.glob("*.tar")):
        with tarfile.open(tar) as tf:
            out[tar.name] = tf.getnames()
    return out
