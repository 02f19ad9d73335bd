"""What every benchmark shares: the configuration, timing, one comparison's result, the table."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mountproc._demo_data import make_camera_jpegs


@dataclass(frozen=True)
class Config:
    """How big and how often: ``smoke`` checks the harness (CI), ``full`` measures the targets."""

    work: Path  # generated data and runs live here (reused between invocations when present)
    smoke: bool = False
    repeats: int = 3
    sshfs: bool = True  # also measure over sshfs on 127.0.0.1 (needs root, sshd, sshfs)
    cold: bool = True  # evict the input data from the page cache before every timed run
    images: int = 0  # camera JPEGs for e2e and pool (0: 2,000, or 24 in a smoke run)


@dataclass
class Comparison:
    """Both sides of one comparison, timed in the same invocation, and the target."""

    name: str  # e.g. "end to end, local disk"
    baseline: str  # e.g. "serial script (Valohai guide)"
    ours: str  # e.g. "mountproc run"
    baseline_s: list[float] = field(default_factory=list)  # seconds per repeat (or MB for memory)
    ours_s: list[float] = field(default_factory=list)
    target: str = ""  # e.g. "ratio <= 0.333 (3x faster)"
    check: Callable[[float], bool] | None = None  # ratio -> target met
    unit: str = "s"
    note: str = ""  # e.g. what was verified equal, or why a target is missed
    checks: dict[str, bool] = field(default_factory=dict)  # harness checks, e.g. same samples
    skipped: str = ""  # why this comparison was not measured here (e.g. no sshfs without root)
    error: str = ""  # what went wrong measuring it (e.g. a run that failed or hung)

    @property
    def ratio(self) -> float:
        """Median of ours / median of the baseline (below 1: ours is faster or smaller)."""
        return statistics.median(self.ours_s) / statistics.median(self.baseline_s)

    @property
    def met(self) -> bool | None:
        return None if self.check is None else self.check(self.ratio)


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- added for the e2e, pool and packing benchmarks (only additions above this line's code) ----

REPO = Path(__file__).resolve().parent.parent
RESIZE_JOB = REPO / "jobs" / "resize_images.py"
BASELINES = Path(__file__).resolve().parent / "baselines"
_LEAKY_ENV = ("MOUNTPROC_", "VH_", "DASK_", "TEST_MODE")
DASK_PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"
"""Kept in a subprocess's environment: ``--no-dask-profiler`` sets it (see ``__main__``)."""
_DONE = ".complete"
STOP_GRACE_S = 20.0
RUN_TIMEOUT_S = 600.0  # one run of a side over 2,000 camera JPEGs takes under a minute
SMOKE_RUN_TIMEOUT_S = 90.0  # one over 24 small JPEGs, a few seconds


def at_most(limit: float) -> Callable[[float], bool]:
    """A ``Comparison.check``: the ratio (ours / baseline) is at most ``limit``."""
    return lambda ratio: ratio <= limit


def bench_env() -> dict[str, str]:
    """This process's environment for a benchmark subprocess: no mountproc, Valohai or Dask
    settings leak in, and this checkout's ``mountproc`` is importable from any directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_LEAKY_ENV) or k == DASK_PROFILER_ENV
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_quiet(cmd: Sequence[str | Path], timeout: float = 1200) -> None:
    """Run a benchmark subprocess in a session of its own; raise with the end of its output if
    it fails, or if it overruns ``timeout``: then its whole process group is stopped (a hung
    ``mountproc run`` leaves no Dask worker behind)."""
    args = [str(c) for c in cmd]
    with subprocess.Popen(
        args,
        env=bench_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except BaseException as exc:  # a timeout, or this harness interrupted: stop the run
            _stop_group(proc)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            out, _ = proc.communicate()
            raise RuntimeError(
                f"{' '.join(args)} did not finish in {timeout:g} s (hung?); stopped it:\n"
                f"{out[-3000:]}"
            ) from None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{out[-3000:]}")


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group ``proc`` leads, give it time, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    time.sleep(1.0)  # the group's other members (Dask workers) end after their leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def recording_errors(cmp: Comparison) -> Iterator[None]:
    """Run the block; an exception becomes ``cmp.error`` so that the other comparisons still
    run and the report says what failed."""
    try:
        yield
    except Exception as exc:
        logging.getLogger(__name__).exception("%s failed", cmp.name)
        cmp.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:1500]


def drop_caches() -> bool:
    """Write back dirty pages and drop the whole page cache (root only); return whether it was
    dropped. Python's own libraries are dropped too: prefer ``evict`` for the inputs alone."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def evict(root: Path) -> None:
    """Drop the files under ``root`` from the page cache (``posix_fadvise`` DONTNEED, no root
    needed), so that the next run reads them from the disk; directories stay cached."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm_libraries() -> None:
    """Import what both sides import once, untimed, so that no run pays for reading Python's
    libraries from the disk (a run right after generating data or dropping caches would)."""
    imports = "import PIL.Image, distributed, pandas, pyarrow.parquet, mountproc._cli"
    run_quiet([sys.executable, "-c", imports])
    compile_checkout()


def compile_checkout() -> None:
    """Write the bytecode of this checkout's Python files, as installing a package does: with
    ``PYTHONDONTWRITEBYTECODE`` set (as on some machines), every run of a side would otherwise
    compile mountproc and the baselines from source, a cost no installed copy pays."""
    dirs = [REPO / name for name in ("mountproc", "jobs", "benchmarks")]
    run_quiet([sys.executable, "-m", "compileall", "-q", *dirs])


def cache_note(cfg: Config) -> str:
    """How the page cache was handled, for a comparison's note."""
    if cfg.cold:
        return (
            "input files evicted from the page cache before every run (posix_fadvise), "
            "directories and Python libraries cached"
        )
    return "warm page cache (--warm)"


def cached_dir(path: Path, make: Callable[[Path], object]) -> Path:
    """``path``, made by ``make(tmp)`` into a temporary sibling and renamed once complete; one
    that is complete (its sibling marker ``<name>.complete`` exists) is reused as it is."""
    marker = path.with_name(path.name + _DONE)
    if marker.exists() and path.is_dir():
        return path
    tmp = path.with_name(path.name + ".partial")
    for stale in (tmp, path):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)
    tmp.rename(path)
    marker.write_text("")
    return path


def camera_jpegs(cfg: Config) -> Path:
    """The cached tree of camera-sized JPEGs (``make_camera_jpegs``): 2,000 of 1600x1200 (or
    ``cfg.images``), or 24 of 800x600 in a smoke run."""
    count, size = (24, (800, 600)) if cfg.smoke else (2000, (1600, 1200))
    count = cfg.images or count
    path = cfg.work / "data" / f"camera-{count}-{size[0]}x{size[1]}"
    return cached_dir(path, lambda tmp: make_camera_jpegs(tmp, count, size))


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (whatever was there is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


Side = Callable[[int], Callable[[], object]]
"""One side of a comparison: ``side(i)`` prepares repeat ``i`` (untimed), returns what to time."""


def alternate(
    cfg: Config, cmp: Comparison, baseline: Side, ours: Side, inputs: Path | None = None
) -> None:
    """Time both sides ``cfg.repeats`` times, alternating which goes first, and append the
    seconds to ``cmp``. Before every run, dirty pages are written back and, when ``cfg.cold``,
    the ``inputs`` are evicted from the page cache."""
    for i in range(cfg.repeats):
        sides = [(baseline, cmp.baseline_s), (ours, cmp.ours_s)]
        for side, times in sides if i % 2 == 0 else reversed(sides):
            run = side(i)
            os.sync()  # the previous run's writeback is not this run's
            if inputs is not None and cfg.cold:
                evict(inputs)
            times.append(timed(run))


def sshfs_unavailable(cfg: Config) -> str | None:
    """Why sshfs comparisons cannot run here (``--no-sshfs``, not root, tools missing), or None."""
    if not cfg.sshfs:
        return "--no-sshfs given"
    netfs = _netfs()
    reason: str | None = netfs.sshfs_available()
    return reason


@contextlib.contextmanager
def sshfs_mount(cfg: Config, export: Path, name: str) -> Iterator[Path]:
    """``export`` mounted read-only by sshfs over an sshd on 127.0.0.1 (``tests/helpers/netfs.py``);
    yields the mount point, and unmounts and stops both daemons on exit."""
    netfs = _netfs()
    mountpoint = cfg.work / "mnt" / name
    control = fresh_dir(cfg.work / "sshfs" / name)
    with netfs.SshfsMount.start(export, mountpoint, control, readonly=True) as mount:
        yield Path(mount.mountpoint)


def _netfs() -> Any:
    """The tests' sshfs helper module (``tests/helpers/netfs.py``)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("helpers.netfs")


def tar_members(tars: Iterable[Path]) -> dict[str, str]:
    """``{member name: sha256 of its bytes}`` over all ``tars``; a name in two tars is an error."""
    members: dict[str, str] = {}
    for path in sorted(tars):
        with tarfile.open(path) as tar:
            for info in tar:
                f = tar.extractfile(info)
                if f is None:
                    continue  # a directory entry
                if info.name in members:
                    raise ValueError(f"member {info.name} is in more than one tar ({path})")
                members[info.name] = hashlib.sha256(f.read()).hexdigest()
    return members


def same_samples(baseline: dict[str, str], ours: dict[str, str]) -> tuple[bool, str]:
    """Whether two ``tar_members`` results hold the same (name, bytes) pairs, and a short text
    saying how many they hold or how they differ."""
    if baseline == ours:
        return True, f"same {len(ours)} members (name and bytes) on both sides"
    only_base = sorted(set(baseline) - set(ours))
    only_ours = sorted(set(ours) - set(baseline))
    differ = sorted(n for n in set(baseline) & set(ours) if baseline[n] != ours[n])
    parts = [
        f"{len(names)} {what} (e.g. {names[0]})"
        for names, what in (
            (only_base, "only in the baseline's tars"),
            (only_ours, "only in ours"),
            (differ, "with different bytes"),
        )
        if names
    ]
    return False, "samples differ: " + "; ".join(parts)


def run_timeout(cfg: Config) -> float:
    """How long one run of a side may take before it counts as hung."""
    return SMOKE_RUN_TIMEOUT_S if cfg.smoke else RUN_TIMEOUT_S


def subprocess_side(
    out: Path, command: Callable[[Path], Sequence[str | Path]], timeout: float = RUN_TIMEOUT_S
) -> Side:
    """A side that runs ``command(out)`` as a subprocess, into a fresh ``out`` every repeat."""

    def prepare(_: int) -> Callable[[], object]:
        fresh_dir(out)
        cmd = command(out)
        return lambda: run_quiet(cmd, timeout)

    return prepare


def mountproc_run(source: Path) -> Callable[[Path], list[str | Path]]:
    """``mountproc run jobs/resize_images.py`` on ``source`` as a user runs it: the CLI with its
    embedded LocalCluster and default settings, scratch and outputs under the side's directory."""
    return lambda out: [
        *(sys.executable, "-m", "mountproc", "run", RESIZE_JOB, "--source", source),
        *("--scratch", out / "scratch", "--outputs", out / "outputs"),
    ]
