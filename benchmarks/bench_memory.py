"""Driver memory and listing time at scale (issue 18, target 6): the peak RSS of the driver
process that lists and shards 100,000, 1,000,000 and 10,000,000 files, and how its listing time
grows. Memory: the baseline side is the 100,000-file figure, ours the 10,000,000 one (flat: within
1.2x, and under 600 MB). Listing time: "10x the files, <= 11x the time" is read as each tenfold
step of the tree; the row compares the 1,000,000-file tree (baseline) with the 10,000,000 one
(ours), the step where a growing cost would show, and its note gives the 100,000 -> 1,000,000
step too (that one is blurred by the fixed cost of a small tree).

Each driver is a process of its own, polled every 20 ms for ``VmHWM`` (``/proc/PID/status``: the
kernel's high-water mark of its resident set since it exec'ed, so a poll misses nothing but
growth in its last 20 ms). ``wait4``'s ``ru_maxrss`` is no use here: it also counts the memory of
this process, which the child shared until it exec'ed. Two drivers, both on a job whose
transform returns nothing (``JOB_TEXT``):

* ``mountproc plan JOB --source TREE``: the CLI, which lists and shards as ``run`` does, then
  computes what ``plan`` prints: the test-mode subset of the whole listing, the largest shard,
  the skip reasons, and a sample timed in a process of its own (not counted);
* ``list_and_shard``: a Python process that imports what ``mountproc run`` imports and does what
  ``run`` does before any shard starts (settings, the mount check, ``_listing.stage.list_and_shard``
  into scratch), and nothing else. It prints how long the listing took (``list_source``, timed
  inside the process: no imports or start-up in it) and its own VmHWM once the listing is done.

The 10,000,000-file tree's files are empty (``benchmarks.trees.TREE_10M``); the others have
0-200 bytes each. The driver reads no file's content, so only the byte totals differ.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, Comparison, Config, bench_env, fresh_dir
from benchmarks.trees import SMOKE, TREE_1M, TREE_10M, TREE_100K, TreeSpec, ensure_tree

JOB_TEXT = '''"""Benchmark job: a transform that does nothing."""

from mountproc import Context, Job, SourceFile

job = Job(name="bench-memory")


@job.transform
def nothing(src: SourceFile, ctx: Context[object]) -> dict[str, bytes]:
    return {}
'''
LIMIT_MB = 600.0
GROWTH = 1.2  # the 10M figure within 1.2x of the 100k one
LINEAR = 11.0  # ten times the files in at most eleven times the listing time
POLL_S = 0.02
FULL_ROUNDS = 1
"""Rounds over the three trees in a full run: one round lists 11.1 million files twice (about 20
minutes here), and a high-water mark varies by a few MB between rounds, not by a ratio's worth."""
SMOKE_SMALL = TreeSpec("smoke-300", (2, 3), 40, 60)
"""The smoke run's small side: 300 files (its large side is ``SMOKE``, 3,000)."""

DRIVER = """
import sys, time
from dataclasses import replace
from pathlib import Path
import mountproc._cli  # everything a `mountproc run` process imports
from mountproc._cli.main import arrow_pool
arrow_pool()  # what the CLI does before any command
import mountproc._runner
from functools import partial
from mountproc._jobfile import load_job, read_job_file
from mountproc._listing import stage
from mountproc._mounts.preflight import preflight_source
from mountproc._outputs.layout import RunPaths
from mountproc._resolve import resolve
job = load_job(read_job_file(sys.argv[1]))
run = resolve(job, {"source": Path(sys.argv[2])}, {}, {})
run = replace(run, scratch=Path(sys.argv[3]))
mount = preflight_source(run, job.readonly)
paths = RunPaths(run.outputs, run.scratch, job.name)
paths.shards.mkdir(parents=True)
where = partial(stage.lister, run, mount, None)
list_source = stage.list_source
def timed(*args):
    started = time.perf_counter()
    stats = list_source(*args)
    took = time.perf_counter() - started
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
    print(f"listing took {took:.3f} s, VmHWM {int(hwm) / 1024:.1f} MB after it")
    return stats
stage.list_source = timed  # list_and_shard calls it: the listing, timed without the sharding
plan, entries = stage.list_and_shard(job, run, paths.listing, paths.plan, where)
print(f"{entries} entries, {plan.files} files in {plan.shards} shards")
"""


@dataclass(frozen=True)
class Peak:
    """One driver's run."""

    hwm_mb: float  # its own VmHWM, polled
    listed: str  # the driver's output
    seconds: float  # the whole process

    @property
    def listing_s(self) -> float:
        """The listing's own time, as the ``list_and_shard`` driver printed it."""
        return float(self._printed("listing took ", " s"))

    @property
    def listed_hwm_mb(self) -> float:
        """The driver's VmHWM once the listing was done (before the sharding)."""
        return float(self._printed("VmHWM ", " MB after it"))

    def _printed(self, before: str, after: str) -> str:
        return self.listed.split(before, 1)[1].split(after, 1)[0]


Peaks = dict[TreeSpec, list[Peak]]


def run(cfg: Config) -> list[Comparison]:
    """Both drivers on the three trees; memory compares the smallest tree (the baseline) with
    the largest (ours), listing time the middle one with the largest."""
    specs = (SMOKE_SMALL, SMOKE_SMALL, SMOKE) if cfg.smoke else (TREE_100K, TREE_1M, TREE_10M)
    trees = {spec: ensure_tree(cfg.work, spec) for spec in specs}
    work = fresh_dir(cfg.work / "runs" / "memory")
    job = work / "nothing.py"
    job.write_text(JOB_TEXT)
    imports = peak([sys.executable, "-c", "import mountproc._cli"], work / "imports.log")
    out = []
    for name, command in (("mountproc plan", _plan), ("list_and_shard", _list_and_shard)):
        peaks = _measure(cfg, fresh_dir(work / name.replace(" ", "-")), job, trees, command)
        cmp = _comparison(name, specs, peaks)
        cmp.note += f"; of which imports (mountproc._cli alone): {imports.hwm_mb:.0f} MB"
        out.append(cmp)
    out.append(_listing_time(specs, peaks))  # the list_and_shard driver's, timed inside it
    return out


Command = Callable[[Path, Path, Path], list[str]]
"""The driver's command line, given the job file, the source and a scratch directory."""


def _plan(job: Path, source: Path, _scratch: Path) -> list[str]:
    return [sys.executable, "-m", "mountproc", "plan", str(job), "--source", str(source)]


def _list_and_shard(job: Path, source: Path, scratch: Path) -> list[str]:
    return [sys.executable, "-c", DRIVER, str(job), str(source), str(scratch)]


def _measure(
    cfg: Config, work: Path, job: Path, trees: dict[TreeSpec, Path], command: Command
) -> Peaks:
    """Each tree ``cfg.repeats`` times (once in a full run: ``FULL_ROUNDS``), smallest first in
    even rounds, largest first in odd."""
    peaks: Peaks = {spec: [] for spec in trees}
    for i in range(cfg.repeats if cfg.smoke else min(cfg.repeats, FULL_ROUNDS)):
        for spec in list(trees) if i % 2 == 0 else list(trees)[::-1]:
            scratch = fresh_dir(work / "scratch")
            log = work / f"{spec.name}-{i}.log"
            peaks[spec].append(peak(command(job, trees[spec], scratch), log))
    return peaks


def peak(cmd: list[str], log: Path) -> Peak:
    """Run ``cmd`` (output to ``log``), polling its VmHWM until it exits; raise if it fails."""
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=bench_env(), cwd=REPO
        )
    hwm_kb = 0
    while True:
        hwm_kb = max(hwm_kb, _hwm_kb(proc.pid))
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{tail}")
    return Peak(hwm_kb / 1024, log.read_text(errors="replace"), time.perf_counter() - started)


def _hwm_kb(pid: int) -> int:
    """The process's VmHWM in KiB (0 once it has let go of its memory, exiting)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _comparison(name: str, specs: tuple[TreeSpec, ...], peaks: Peaks) -> Comparison:
    small, large = specs[0], specs[-1]
    cmp = Comparison(f"driver memory, {name}", f"{small.files:,} files", f"{large.files:,} files")
    cmp.baseline_s = [p.hwm_mb for p in peaks[small]]
    cmp.ours_s = [p.hwm_mb for p in peaks[large]]
    cmp.unit = "MB"
    cmp.target = f"ours < {LIMIT_MB:g} MB and ratio <= {GROWTH:g}"
    cmp.check = lambda ratio: ratio <= GROWTH and statistics.median(cmp.ours_s) < LIMIT_MB
    cmp.checks["every driver listed every file"] = all(
        _listed_all(p.listed, spec.files) for spec, side in peaks.items() for p in side
    )
    cmp.note = _note(peaks)
    return cmp


def _note(peaks: Peaks) -> str:
    parts = []
    for spec, side in peaks.items():
        hwm = statistics.median(p.hwm_mb for p in side)
        took = statistics.median(p.seconds for p in side)
        text = f"{spec.files:,} files: VmHWM {hwm:.0f} MB, {took:.1f} s"
        if "listing took" in side[0].listed:
            text += (
                f" (VmHWM {statistics.median(p.listed_hwm_mb for p in side):.0f} MB once listed)"
            )
        parts.append(text)
    return "; ".join(parts) + f"; medians; {_load()}"


def _listing_time(specs: tuple[TreeSpec, ...], peaks: Peaks) -> Comparison:
    """The listing's time on the middle tree (baseline) and the largest (ours)."""
    small, mid, large = specs
    cmp = Comparison(
        "listing time, 10x the files", f"{mid.files:,} files", f"{large.files:,} files"
    )
    cmp.baseline_s = [p.listing_s for p in peaks[mid]]
    cmp.ours_s = [p.listing_s for p in peaks[large]]
    cmp.target = f"ratio <= {LINEAR:g} ({large.files / mid.files:g}x the files)"
    cmp.check = lambda ratio: ratio <= LINEAR
    medians = {spec: statistics.median(p.listing_s for p in peaks[spec]) for spec in peaks}
    per_file = ", ".join(
        f"{spec.files:,}: {medians[spec] / spec.files * 1e6:.1f}" for spec in peaks
    )
    steps = (
        f"{small.files:,} -> {mid.files:,} files: {medians[mid] / medians[small]:.2f}x the time; "
    )
    cmp.note = (
        "listing alone, timed inside the list_and_shard driver; "
        + (steps if small != mid else "")
        + f"us per file: {per_file}; {_load()}"
    )
    return cmp


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"2 shared cores, load {one:.1f} (1 min), {five:.1f} (5 min)"


def _listed_all(output: str, files: int) -> bool:
    """Whether a driver's output says it found all ``files``: ``plan``'s table, or the
    ``list_and_shard`` driver's line."""
    return f"{files} entries, {files} files" in output or f"files        {files:,} " in output
