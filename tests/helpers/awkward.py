"""A real run over photos with awkward names (dots, a hidden file, a non-UTF-8 name), read back
by the loaders users train with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from helpers import NON_UTF8, RESIZE_JOB, read_manifest, run_cli
from mountproc._demo_data import make_demo_tree

# dots in directory names and file stems, a stem that is only dots' neighbours, a non-UTF-8 name
ODD_NAMES = ("v1.2/scan.final.v3.jpg", "a.b.c/d.e/IMG.1.JPG", "x/.hidden.jpg", "x/..jpg")


def publish_awkward_tree(root: Path) -> dict[str, Any]:
    """Run the resize job over photos with awkward names into ``root/out``, in shards of 5."""
    src = root / "src"
    good = make_demo_tree(src, count=24)
    for name in [*ODD_NAMES, NON_UTF8]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good[0], src / name)
    out = root / "out"
    args = ("--source", src, "--outputs", out, "--shard-max-files", "5", "--max-failures", "50%")
    proc = run_cli("run", RESIZE_JOB, *args, cwd=root)
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in read_manifest(out) if r["status"] == "ok"]
    assert len(rows) >= 24
    return {"src": src, "out": out, "rows": rows, "root": root}
