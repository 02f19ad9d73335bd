"""Against the peers a user would pick instead: the idiomatic dask.bag script and the idiomatic
Ray Data script against ``mountproc run``, on the same 2 cores.

The script (``baselines/daskbag_resize.py``) starts a LocalCluster of one single-thread worker
process per core, maps the Pool script's very transform over ``db.from_sequence(paths,
npartitions=...)`` and writes one tar per partition of 1,000 files (mountproc's default shard).
Both run as fresh subprocesses over the camera JPEGs on local disk, and over a single one of them
(start-up: target 1 of issue 18 is mountproc under 1 s there, whatever the peer takes). The
samples of both (member name and bytes) must be equal.

The Ray Data script (``baselines/raydata_resize.py``: ``read_binary_files`` -> ``flat_map`` of
the same transform -> ``write_webdataset``) runs with the Python of a virtualenv under the work
directory (``venv-ray``, made once with ``ray[data]`` installed: Ray is no dependency of
mountproc); where it cannot be installed (no network) its row is skipped with the reason, and
in a smoke run it is skipped (CI downloads no Ray). Its members are named as mountproc's, so
its samples are compared name for name too.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
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
RAY_SCRIPT = BASELINES / "raydata_resize.py"
RAY_BASELINE = "Ray Data script (read_binary_files, flat_map, write_webdataset)"
RAY_TARGET = 0.5
RAY_REQUIREMENT = "ray[data]==2.60.0"  # pinned: the row compares against one known Ray
RAY_INSTALL_TIMEOUT_S = 1200.0


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
    return [many, one, against_ray(cfg)]


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


def against_ray(cfg: Config) -> Comparison:
    """The Ray Data script against mountproc on the camera JPEGs, or why it was skipped."""
    cmp = Comparison(
        "against Ray Data, local disk",
        RAY_BASELINE,
        OURS,
        target=f"ratio <= {RAY_TARGET:g}",
        check=at_most(RAY_TARGET),
    )
    if cfg.smoke:
        cmp.skipped = "smoke run: Ray Data is not installed for it"
        return cmp
    with recording_errors(cmp):
        python, why = ray_python(cfg.work / "venv-ray")
        if python is None:
            cmp.skipped = why
            log.warning("skipping %s: %s", cmp.name, why)
            return cmp
        data = camera_jpegs(cfg)
        measure(cfg, cmp, data, data, "peers-ray", ("ray", ray_command(python)))
        cmp.note += f"; {why}"
    return cmp


def ray_command(python: Path) -> Callable[[Path], Callable[[Path], list[str | Path]]]:
    """The Ray Data script, run by the Python of Ray's virtualenv, on a source."""
    return lambda source: lambda out: [python, RAY_SCRIPT, RESIZE_JOB, source, out]


def ray_python(venv: Path) -> tuple[Path | None, str]:
    """The Python of ``venv``, a virtualenv over this one's packages with ``RAY_REQUIREMENT``
    installed (made the first time, reused after), and the version installed; or None and why
    it could not be made."""
    python, done = venv / "bin" / "python", venv / "installed.txt"
    if done.exists() and done.read_text().startswith(RAY_REQUIREMENT + "\n"):
        return python, done.read_text().splitlines()[1]
    shutil.rmtree(venv, ignore_errors=True)
    log.info("installing %s into %s", RAY_REQUIREMENT, venv)
    steps = {
        "python -m venv": [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        f"pip install {RAY_REQUIREMENT}": [
            *(str(python), "-m", "pip", "install", "-q", "--retries", "1", RAY_REQUIREMENT)
        ],
        "import ray": [str(python), "-c", "import ray; print('Ray', ray.__version__)"],
    }
    try:
        for step, cmd in steps.items():
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=RAY_INSTALL_TIMEOUT_S, check=False
            )
            if proc.returncode != 0:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                return None, f"Ray Data did not install ({step}: {last[0]})"
    except subprocess.TimeoutExpired:
        return None, f"Ray Data did not install in {RAY_INSTALL_TIMEOUT_S:g} s"
    done.write_text(f"{RAY_REQUIREMENT}\n{proc.stdout.strip()}\n")
    return python, proc.stdout.strip()
