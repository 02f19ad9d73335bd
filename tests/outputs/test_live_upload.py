"""Valohai uploads a read-only file in outputs at once and takes it away: a run beside a
stand-in for that uploader ends well, every tar and sidecar is taken as soon as it is final,
and what stays for the end of the execution is the metadata file, naming every file taken."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from helpers import read_metadata, run_cli
from helpers.pinned import JOB, make_tree

pytestmark = pytest.mark.cluster


class Uploader:
    """Moves every read-only file out of ``outputs`` the moment it appears (as Valohai's live
    upload does), until stopped."""

    def __init__(self, outputs: Path, uploaded: Path) -> None:
        self.outputs, self.uploaded = outputs, uploaded
        self.taken: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Uploader:
        self.uploaded.mkdir()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            if not self.outputs.is_dir():
                continue
            for entry in os.scandir(self.outputs):
                if entry.is_file() and not entry.stat().st_mode & stat.S_IWUSR:
                    shutil.move(entry.path, self.uploaded / entry.name)
                    self.taken.append(entry.name)


def test_a_run_beside_a_live_uploader(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    job = tmp_path / "pinned.py"
    job.write_text(JOB)
    with Uploader(out, tmp_path / "uploaded") as uploader:
        proc = run_cli("run", job, "--source", src, "--outputs", out, "--workers", "1",
                       "--shard-max-files", "3", "--max-failures", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sidecars = ["pinned-manifest.parquet", "pinned-summary.json", "pinned-wids-index.json"]
    tars = [f"pinned-{i:06d}.tar" for i in range(3)]
    assert sorted(uploader.taken) == sorted(tars + sidecars)
    assert sorted(p.name for p in out.iterdir()) == ["valohai.metadata.jsonl"]
    assert sorted(m["file"] for m in read_metadata(out)) == sorted(tars + sidecars)
