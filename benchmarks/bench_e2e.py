"""End to end: today's serial script (Valohai's network-storage guide) against ``mountproc run``.

The script (``baselines/serial_resize.py``) walks the source, opens, resizes to 224x224 and
saves each image into an output folder, then ``tar -cf`` packs the folder. ``mountproc run
jobs/resize_images.py`` runs as a user runs it: the CLI in a subprocess with its embedded
LocalCluster and default settings, fresh scratch and outputs every repeat.
"""

from __future__ import annotations

import logging
import sys
import tarfile
from pathlib import Path

from benchmarks.bench_pool import count_images
from benchmarks.common import (
    BASELINES,
    Comparison,
    Config,
    alternate,
    at_most,
    cache_note,
    camera_jpegs,
    mountproc_run,
    recording_errors,
    run_timeout,
    subprocess_side,
    tar_members,
    warm_libraries,
)

log = logging.getLogger(__name__)

SERIAL_SCRIPT = BASELINES / "serial_resize.py"
NAME = "end to end, local disk"
TARGET = 0.333  # 3x faster


def run(cfg: Config) -> list[Comparison]:
    """The serial script against mountproc on the camera JPEGs on local disk."""
    data = camera_jpegs(cfg)
    images = count_images(data)
    cmp = Comparison(
        name=NAME,
        baseline="serial script (Valohai guide)",
        ours="mountproc run",
        target=f"ratio <= {TARGET:g} (3x faster)",
        check=at_most(TARGET),
    )
    with recording_errors(cmp):
        measure(cfg, cmp, data, images)
    return [cmp]


def measure(cfg: Config, cmp: Comparison, data: Path, images: int) -> None:
    """Time both sides on ``data``, then check that both made an output for every image."""
    base_out, ours_out = cfg.work / "runs" / "e2e" / "serial", cfg.work / "runs" / "e2e" / "ours"
    log.info("%s: %d repeats", cmp.name, cfg.repeats)
    serial = subprocess_side(
        base_out, lambda out: [sys.executable, SERIAL_SCRIPT, data, out], run_timeout(cfg)
    )
    warm_libraries()
    ours_side = subprocess_side(ours_out, mountproc_run(data), run_timeout(cfg))
    alternate(cfg, cmp, serial, ours_side, data)
    cmp.checks["baseline made every image"] = serial_count(base_out / "resized.tar") == images
    ours = tar_members((ours_out / "outputs").glob("*.tar"))
    cmp.checks["every file processed"] = sum(n.endswith(".jpg") for n in ours) == images
    cmp.note = (
        f"{images} JPEGs; not the same output: the script squashes to 224x224 at JPEG quality "
        "75, mountproc fits within 224x224 keeping the aspect (JPEG draft decoding, quality 90); "
        f"{cache_note(cfg)}"
    )


def serial_count(tar_path: Path) -> int:
    """The images in the serial script's tar."""
    with tarfile.open(tar_path) as tar:
        return sum(1 for info in tar if info.isfile())
