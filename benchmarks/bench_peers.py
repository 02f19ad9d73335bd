"""Against the peer a Dask user would pick instead: the idiomatic dask.bag script against
``mountproc run``, on the same engine and the same 2 cores.

The script (``baselines/daskbag_resize.py``) starts a LocalCluster of one single-thread worker
process per core, maps the Pool script's very transform over ``db.from_sequence(paths,
npartitions=...)`` and writes one tar per partition of 1,000 files (mountproc's default shard).
Both run as fresh subprocesses over the camera JPEGs on local disk, and over a single one of them
(start-up: target 1 of issue 18 is mountproc under 1 s there, whatever the peer takes). The
samples of both (member name and bytes) must be equal.
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_pool import measure
from benchmarks.common import (
    BASELINES,
    RESIZE_JOB,
    Comparison,
    Config,
    at_most,
    cached_dir,
    camera_jpegs,
    recording_errors,
    warm_libraries,
)
from mountproc._demo_data import make_camera_jpegs

log = logging.getLogger(__name__)

DASKBAG_SCRIPT = BASELINES / "daskbag_resize.py"
BASELINE, OURS = "dask.bag script (LocalCluster, 1-thread workers)", "mountproc run"
TARGET = 0.95
ONE_FILE_TARGET_S = 1.0


def run(cfg: Config) -> list[Comparison]:
    """dask.bag against mountproc on the camera JPEGs, and on a single one of them."""
    warm_libraries()
    many = Comparison(
        "against dask.bag, local disk",
        BASELINE,
        OURS,
        target=f"ratio <= {TARGET:g}",
        check=at_most(TARGET),
    )
    with recording_errors(many):
        measure(cfg, many, camera_jpegs(cfg), camera_jpegs(cfg), "peers", baseline())
    one = Comparison("start-up, one camera JPEG", BASELINE, OURS)
    one.target = f"mountproc <= {ONE_FILE_TARGET_S:g} s"
    one.check = lambda _: statistics.median(one.ours_s) <= ONE_FILE_TARGET_S
    with recording_errors(one):
        source = one_jpeg(cfg)
        measure(cfg, one, source, source, "peers-one", baseline())
    return [many, one]


def baseline() -> tuple[str, Callable[[Path], Callable[[Path], list[str | Path]]]]:
    """The dask.bag script's name and command line."""
    return (
        "daskbag",
        lambda source: lambda out: [*(sys.executable, DASKBAG_SCRIPT, RESIZE_JOB, source, out)],
    )


def one_jpeg(cfg: Config) -> Path:
    """The cached tree of a single camera JPEG (800x600 in a smoke run)."""
    size = (800, 600) if cfg.smoke else (1600, 1200)
    path = cfg.work / "data" / f"camera-1-{size[0]}x{size[1]}"
    return cached_dir(path, lambda tmp: make_camera_jpegs(tmp, 1, size))
