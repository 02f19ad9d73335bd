"""Listing (issue 18, targets 3 and 4): mountproc's crawl against ``find``.

"mountproc's crawl" is what ``mountproc run`` does to list, in this process: the source's
``SourceWatch`` and ``_listing.stage.lister`` (serial on a local disk, 16 threads on sshfs as on
any network or FUSE mount) around ``write_listing`` of every file into Parquet with its size and
mtime. The mount check before it and the sharding after it are not timed. ``find -type f`` only
reads directories (``d_type`` tells it what is a file), whereas mountproc stats every file;
``find -printf '%s %T@ %p\n'`` of size and mtime does that same stat per file, in C. On a local
disk the target is against ``find -printf`` (the same work; ``find -type f`` for reference);
over sshfs, against ``find -type f`` (the threads must hide the round trips of the stats).

Conditions: on local disk, directories and inodes warm in the kernel's caches (each side runs
once untimed first); over sshfs on 127.0.0.1, a fresh mount (default options) for every timed
run, so that no side gets the caches of sshfs or of the kernel (the exported directory is warm on
the server's side). Sides take turns going first.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import (
    Comparison,
    Config,
    at_most,
    fresh_dir,
    sshfs_mount,
    sshfs_unavailable,
    timed,
)
from benchmarks.trees import LISTING, SMOKE, ensure_tree
from mountproc import Job
from mountproc._listing.listing import ListingStats, write_listing
from mountproc._listing.stage import job_patterns, lister
from mountproc._mounts.source import check_source
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._resolve import resolve

LOCAL_RATIO = 1.2  # against find -printf: the same stat per file, within 20%
SSHFS_RATIO = 0.5  # against find -type f: at least 2x faster
FIND = "find SRC -type f > FILE"
FIND_STAT = "find SRC -type f -printf '%s %T@ %p\\n' > FILE"
OURS = "mountproc's listing (as run lists)"
STAT_FORMAT = "%s %T@ %p\n"

Mount = Callable[[], AbstractContextManager[Path]]
"""Gives the source as one timed run sees it (the tree itself, or a fresh sshfs mount of it)."""


@dataclass
class _Runs:
    """What the three sides did: seconds per repeat, and what each listed."""

    work: Path
    seconds: dict[str, list[float]] = field(default_factory=dict)
    stats: list[ListingStats] = field(default_factory=list)  # mountproc's, one per repeat
    find_prefix: str = ""  # the source as find saw it, to take off its output's lines
    lister: str = ""  # how mountproc listed: serially, or over how many threads

    def side(self, name: str, src: Path) -> Callable[[], object]:
        """What to time for side ``name`` on ``src``."""
        if name == "mountproc":
            return _mountproc(src, self.work / "listing.parquet", self)
        self.find_prefix = os.path.join(src, "")
        extra = ["-printf", STAT_FORMAT] if name == "find-stat" else []
        return lambda: _find(src, self.work / f"{name}.txt", extra)


def run(cfg: Config) -> list[Comparison]:
    """Local disk, then sshfs (unless unavailable): each against find, and find -printf."""
    spec = SMOKE if cfg.smoke else LISTING
    tree = ensure_tree(cfg.work, spec)
    size = f"{spec.files:,} files"
    local = measure(cfg, "local", lambda: contextlib.nullcontext(tree), warm=True)
    conditions = f"warm caches (directories and inodes); listed {local.lister}; {_load()}"
    out = comparisons(local, f"local disk, {size}", ("find-stat", LOCAL_RATIO), conditions)
    reason = sshfs_unavailable(cfg)
    if reason is not None:
        names = (f"listing, sshfs, {size}", f"listing, sshfs, {size}, find stats too")
        return out + [Comparison(n, FIND, OURS, skipped=reason) for n in names]
    remote = measure(cfg, "sshfs", lambda: sshfs_mount(cfg, tree, "listing"), warm=False)
    note = (
        "sshfs on 127.0.0.1 with default options, a fresh mount per timed run; listed "
        f"{remote.lister}; {_load()}"
    )
    return out + comparisons(remote, f"sshfs, {size}", ("find", SSHFS_RATIO), note)


def measure(cfg: Config, where: str, mount: Mount, warm: bool) -> _Runs:
    """Every side ``cfg.repeats`` times (after one untimed run each, if ``warm``), the side
    going first taking turns."""
    runs = _Runs(fresh_dir(cfg.work / "runs" / f"listing-{where}"))
    names = ["find", "find-stat", "mountproc"]
    runs.seconds = {name: [] for name in names}
    if warm:
        for name in names:
            with mount() as src:
                runs.side(name, src)()
        runs.stats.clear()
    for i in range(cfg.repeats):
        for name in names[i % 3 :] + names[: i % 3]:
            with mount() as src:
                runs.seconds[name].append(timed(runs.side(name, src)))
    return runs


SIDES = {"find": FIND, "find-stat": FIND_STAT}
REFERENCE = {
    "find": ("names only", "find reading names only (d_type), no stat"),
    "find-stat": ("find stats too", "find doing mountproc's stat per file"),
}


def comparisons(
    runs: _Runs, where: str, target: tuple[str, float], conditions: str
) -> list[Comparison]:
    """Against the ``target`` side of find (``"find"`` or ``"find-stat"``) with its ratio, and
    against the other one for reference."""
    found = _find_files(runs.work / "find.txt", runs.find_prefix)
    listed = _listed_files(runs.work / "listing.parquet")
    checks = {
        "mountproc listed exactly the files find listed": found == listed,
        "every repeat listed the same": len(set(runs.stats)) == 1,
    }
    side, ratio = target
    other = "find" if side == "find-stat" else "find-stat"
    main = Comparison(f"listing, {where}", SIDES[side], OURS, runs.seconds[side])
    main.ours_s = runs.seconds["mountproc"]
    main.target, main.check = f"ratio <= {ratio:g}", at_most(ratio)
    main.note = f"{len(listed):,} files listed by both, the same paths; {conditions}"
    main.checks = checks
    suffix, what = REFERENCE[other]
    ref = Comparison(f"listing, {where}, {suffix}", SIDES[other], OURS)
    ref.baseline_s, ref.ours_s = runs.seconds[other], runs.seconds["mountproc"]
    ref.target = f"none (reference: {what})"
    ref.note = f"same runs as the row above; {conditions}"
    return [main, ref]


def _find(src: Path, out: Path, extra: list[str]) -> None:
    with out.open("wb") as f:
        subprocess.run(["find", str(src), "-type", "f", *extra], stdout=f, check=True)


def _mountproc(src: Path, out: Path, runs: _Runs) -> Callable[[], object]:
    """The listing as ``mountproc run`` does it (``_listing.stage.list_and_shard``, without the
    sharding): settings and the mount check now, untimed; the listing when called."""
    job = Job(name="bench-listing")
    run = resolve(job, {"source": src}, {}, {})
    mount, _warnings = check_source(src, strict=False, allow_writable=True)
    patterns = job_patterns(job)

    def listing() -> None:
        with (
            SourceWatch(run.source, run.settings.mount_timeout, "the listing") as watch,
            lister(run, mount, None) as executor,
        ):
            call = lambda: write_listing(run.source, patterns, out, watch.probe, executor)  # noqa: E731
            runs.stats.append(watch.run(call))
        runs.lister = _describe(executor)

    return listing


def _describe(executor: Executor | None) -> str:
    if executor is None:
        return "serially (the lister's choice for a local disk)"
    threads = getattr(executor, "_max_workers", "?")
    return f"over {threads} threads (the lister's choice for a network or FUSE mount)"


def _find_files(path: Path, prefix: str) -> set[bytes]:
    """The relative paths in find's output (one per line: the names here have no newline)."""
    lines = path.read_bytes().split(b"\n")
    cut = len(os.fsencode(prefix))
    return {line[cut:] for line in lines if line}


def _listed_files(path: Path) -> set[bytes]:
    """The relative paths of the regular files in a listing."""
    table = pq.read_table(path, columns=["path_raw", "kind"])
    files = table.filter(pc.equal(table.column("kind"), "file"))
    return set(files.column("path_raw").to_pylist())


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"2 shared cores, load average {one:.1f} (1 min), {five:.1f} (5 min) at the end"
