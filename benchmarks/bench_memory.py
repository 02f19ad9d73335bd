"""Driver memory (issue 6, item 5): the peak RSS of the driver process that lists and shards
100,000 and 1,000,000 files; the baseline side is the 100,000-file figure, ours the 1,000,000 one.

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
  into scratch), and nothing else.
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
from benchmarks.trees import SMOKE, TREE_1M, TREE_100K, TreeSpec, ensure_tree

JOB_TEXT = '''"""Benchmark job: a transform that does nothing."""

from mountproc import Context, Job, SourceFile

job = Job(name="bench-memory")


@job.transform
def nothing(src: SourceFile, ctx: Context[object]) -> dict[str, bytes]:
    return {}
'''
LIMIT_MB = 400.0
GROWTH = 1.2  # the 1M figure within 1.2x of the 100k one
POLL_S = 0.02
SMOKE_SMALL = TreeSpec("smoke-300", (2, 3), 40, 60)
"""The smoke run's small side: 300 files (its large side is ``SMOKE``, 3,000)."""

DRIVER = """
import sys
from dataclasses import replace
from pathlib import Path
import mountproc._cli  # everything a `mountproc run` process imports
import mountproc._runner
from functools import partial
from mountproc._jobfile import load_job, read_job_file
from mountproc._listing.stage import list_and_shard, lister
from mountproc._mounts.preflight import preflight_source
from mountproc._outputs.layout import RunPaths
from mountproc._resolve import resolve
job = load_job(read_job_file(sys.argv[1]))
run = resolve(job, {"source": Path(sys.argv[2])}, {}, {})
run = replace(run, scratch=Path(sys.argv[3]))
mount = preflight_source(run, job.readonly)
paths = RunPaths(run.outputs, run.scratch, job.name)
paths.shards.mkdir(parents=True)
where = partial(lister, run, mount, None)
plan, entries = list_and_shard(job, run, paths.listing, paths.plan, where)
print(f"{entries} entries, {plan.files} files in {plan.shards} shards")
"""


@dataclass(frozen=True)
class Peak:
    """One driver's memory."""

    hwm_mb: float  # its own VmHWM, polled
    listed: str  # the driver's output
    seconds: float


def run(cfg: Config) -> list[Comparison]:
    """Both drivers, each on the small tree (the baseline) and on the large one (ours)."""
    small, large = (SMOKE_SMALL, SMOKE) if cfg.smoke else (TREE_100K, TREE_1M)
    trees = (ensure_tree(cfg.work, small), ensure_tree(cfg.work, large))
    work = fresh_dir(cfg.work / "runs" / "memory")
    job = work / "nothing.py"
    job.write_text(JOB_TEXT)
    imports = peak([sys.executable, "-c", "import mountproc._cli"], work / "imports.log")
    out = []
    for name, command in (("mountproc plan", _plan), ("list_and_shard", _list_and_shard)):
        peaks = _measure(cfg, fresh_dir(work / name.replace(" ", "-")), (job, *trees), command)
        cmp = _comparison(name, (small, large), peaks)
        cmp.note += f"; of which imports (mountproc._cli alone): {imports.hwm_mb:.0f} MB"
        out.append(cmp)
    return out


Command = Callable[[Path, Path, Path], list[str]]
"""The driver's command line, given the job file, the source and a scratch directory."""


def _plan(job: Path, source: Path, _scratch: Path) -> list[str]:
    return [sys.executable, "-m", "mountproc", "plan", str(job), "--source", str(source)]


def _list_and_shard(job: Path, source: Path, scratch: Path) -> list[str]:
    return [sys.executable, "-c", DRIVER, str(job), str(source), str(scratch)]


def _measure(
    cfg: Config, work: Path, inputs: tuple[Path, Path, Path], command: Command
) -> tuple[list[Peak], list[Peak]]:
    """Each tree (``inputs``: the job, the small tree, the large one) ``cfg.repeats`` times,
    taking turns going first."""
    job, trees = inputs[0], inputs[1:]
    peaks: tuple[list[Peak], list[Peak]] = ([], [])
    for i in range(cfg.repeats):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            scratch = fresh_dir(work / "scratch")
            log = work / f"{'small' if side == 0 else 'large'}-{i}.log"
            peaks[side].append(peak(command(job, trees[side], scratch), log))
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


def _comparison(
    name: str, specs: tuple[TreeSpec, TreeSpec], peaks: tuple[list[Peak], list[Peak]]
) -> Comparison:
    small, large = specs
    cmp = Comparison(f"driver memory, {name}", f"{small.files:,} files", f"{large.files:,} files")
    cmp.baseline_s = [p.hwm_mb for p in peaks[0]]
    cmp.ours_s = [p.hwm_mb for p in peaks[1]]
    cmp.unit = "MB"
    cmp.target = f"ours < {LIMIT_MB:g} MB and ratio <= {GROWTH:g}"
    cmp.check = lambda ratio: ratio <= GROWTH and statistics.median(cmp.ours_s) < LIMIT_MB
    cmp.checks["every driver listed every file"] = all(
        _listed_all(p.listed, spec.files)
        for spec, side in zip(specs, peaks, strict=True)
        for p in side
    )
    cmp.note = _note(specs, peaks)
    return cmp


def _note(specs: tuple[TreeSpec, TreeSpec], peaks: tuple[list[Peak], list[Peak]]) -> str:
    parts = []
    for spec, side in zip(specs, peaks, strict=True):
        hwm = statistics.median(p.hwm_mb for p in side)
        took = statistics.median(p.seconds for p in side)
        parts.append(f"{spec.files:,} files: VmHWM {hwm:.0f} MB, {took:.1f} s")
    one, five, _ = os.getloadavg()
    return (
        "; ".join(parts) + f"; medians; 2 shared cores, load {one:.1f} (1 min), {five:.1f} (5 min)"
    )


def _listed_all(output: str, files: int) -> bool:
    """Whether a driver's output says it found all ``files``: ``plan``'s table, or the
    ``list_and_shard`` driver's line."""
    return f"{files} entries, {files} files" in output or f"files        {files:,} " in output
