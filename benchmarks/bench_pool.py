"""Framework overhead: a hand-written ``multiprocessing.Pool`` script against ``mountproc run``.

Both run the very same transform (``jobs/resize_images.py``) on the same 2 cores, over the
camera JPEGs on local disk and over sshfs on 127.0.0.1, each as a fresh subprocess with fresh
output directories. Afterwards the samples of both (member name and bytes, over all tars) must
be equal: tars may be cut differently, samples may not differ.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    BASELINES,
    RESIZE_JOB,
    Comparison,
    Config,
    alternate,
    at_most,
    cache_note,
    cached_dir,
    camera_jpegs,
    mountproc_run,
    recording_errors,
    run_timeout,
    same_samples,
    sshfs_mount,
    sshfs_unavailable,
    subprocess_side,
    tar_members,
    warm_libraries,
)

log = logging.getLogger(__name__)

POOL_SCRIPT = BASELINES / "pool_resize.py"
LOCAL_NAME, LOCAL_TARGET = "framework overhead, local disk", 1.08
STEADY_NAME, STEADY_TARGET = "framework overhead, local disk, 10x the JPEGs", 1.03
COPIES = 10
SSHFS_NAME, SSHFS_TARGET = "framework overhead, sshfs on 127.0.0.1", 0.9
BASELINE, OURS = "multiprocessing.Pool script", "mountproc run"


def run(cfg: Config) -> list[Comparison]:
    """Pool against mountproc on local disk and, when possible, over sshfs."""
    data = camera_jpegs(cfg)
    warm_libraries()
    local, remote = comparison(LOCAL_NAME, LOCAL_TARGET), comparison(SSHFS_NAME, SSHFS_TARGET)
    with recording_errors(local):
        measure(cfg, local, data, data, "pool-local")
    steady = comparison(STEADY_NAME, STEADY_TARGET)
    with recording_errors(steady):
        many = copies(cfg, data)
        measure(cfg, steady, many, many, "pool-steady")
    remote.skipped = sshfs_unavailable(cfg) or ""
    if remote.skipped:
        log.warning("skipping %s: %s", remote.name, remote.skipped)
        return [local, steady, remote]
    with recording_errors(remote), sshfs_mount(cfg, data, "pool") as mounted:
        measure(cfg, remote, mounted, data, "pool-sshfs")
    return [local, steady, remote]


def copies(cfg: Config, data: Path) -> Path:
    """``COPIES`` copies of the camera JPEGs, one folder each (20,000 files from 2,000): the
    steady state of a long run, where a fixed cost no longer counts and a per-shard one does."""
    path = data.with_name(f"{data.name}-x{COPIES}")

    def make(tmp: Path) -> None:
        for i in range(COPIES):
            shutil.copytree(data, tmp / f"copy-{i:02d}")

    return cached_dir(path, make)


def comparison(name: str, target: float) -> Comparison:
    """An empty Pool-against-mountproc comparison with its target."""
    return Comparison(name, BASELINE, OURS, target=f"ratio <= {target:g}", check=at_most(target))


Command = Callable[[Path], Callable[[Path], list[str | Path]]]
"""A baseline script on a source: ``command(source)(out)`` is its command line."""


def measure(
    cfg: Config,
    cmp: Comparison,
    source: Path,
    inputs: Path,
    runs: str,
    baseline: tuple[str, Command] | None = None,
) -> None:
    """Time both sides on ``source`` (``inputs``: the same files on local disk, evicted from
    the page cache before every run), then check that their samples are equal. ``baseline``:
    its name and command (default: the Pool script)."""
    images = count_images(source)
    name, command = baseline or ("pool", pool_command)
    base_out, ours_out = cfg.work / "runs" / runs / name, cfg.work / "runs" / runs / "ours"
    log.info("%s: %d repeats", cmp.name, cfg.repeats)
    pool = subprocess_side(base_out, command(source), run_timeout(cfg))
    ours_side = subprocess_side(ours_out, mountproc_run(source), run_timeout(cfg))
    alternate(cfg, cmp, pool, ours_side, inputs)
    ours = tar_members((ours_out / "outputs").glob("*.tar"))
    equal, text = same_samples(tar_members(base_out.glob("*.tar")), ours)
    cmp.checks["same samples"] = equal
    cmp.checks["every file processed"] = sum(n.endswith(".jpg") for n in ours) == images
    cmp.note = (
        f"{images} JPEGs; {text}; {cache_note(cfg)}; both as subprocesses, "
        f"{os.cpu_count()} {name} processes / local workers"
    )


def count_images(source: Path) -> int:
    """The JPEGs under ``source``."""
    return sum(1 for p in source.rglob("*") if p.suffix.lower() == ".jpg")


def pool_command(source: Path) -> Callable[[Path], list[str | Path]]:
    """The Pool script on ``source``, its tars into the side's directory."""
    return lambda out: [sys.executable, POOL_SCRIPT, RESIZE_JOB, source, out]
