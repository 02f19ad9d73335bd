"""Packing: mountproc's ``TarBuilder`` against GNU ``tar -cf`` on the same shard of files.

Fair by construction: both read every file from disk (ours ``open().read()`` then
``TarBuilder.add``, as a worker's bytes would arrive; GNU tar reads them itself), both write a
PAX tar of the same members in the same order with fixed metadata, and both make the tar
durable: ``TarBuilder.close()`` fsyncs and renames, and after GNU tar exits the harness fsyncs
its tar inside the timing. The page cache is warm for both (a warm-up run of each first): this
measures the tar writer, not the disk. Ours runs in this process (a worker is long-lived), GNU
tar as a subprocess (its start, ~1 ms, is counted). Both tars must hold the same members.
The note gives the CPU time of each side too (ours: all threads of this process, GNU tar: its
process and this one's fsync): on a busy machine the wall-clock ratio follows that of CPU time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import resource
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    Comparison,
    Config,
    Side,
    alternate,
    at_most,
    cached_dir,
    recording_errors,
    same_samples,
    tar_members,
)
from mountproc._shard.tar import TarBuilder

log = logging.getLogger(__name__)

TARGET = 1 / 0.7  # time ratio: throughput at least 0.7x GNU tar's
CHUNK = 1 << 20
GNU_TAR_OPTIONS = [
    "--format=pax",
    "--pax-option=delete=atime,delete=ctime",  # as TarBuilder: no per-member extended header
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--mode=0444",
    "--no-recursion",
]


def run(cfg: Config) -> list[Comparison]:
    """Both writers on a shard of small outputs, and on one of larger files."""
    cases = [("small", 40, (20_000, 30_000)), ("large", 4, (256_000, 512_000))]
    if not cfg.smoke:
        cases = [("small", 1000, (20_000, 30_000)), ("large", 100, (1_000_000, 3_000_000))]
    return [compare(cfg, name, count, sizes) for name, count, sizes in cases]


def compare(cfg: Config, case: str, count: int, sizes: tuple[int, int]) -> Comparison:
    """Time both writers on one shard of ``count`` files sized within ``sizes``."""
    cmp = Comparison(
        name=f"packing, {case} files",
        baseline="GNU tar -cf + fsync",
        ours="TarBuilder (read, add, close)",
        target="ratio <= 1.43 (throughput >= 0.7x GNU tar's)",
        check=at_most(TARGET),
    )
    with recording_errors(cmp):
        root = cached_dir(
            cfg.work / "data" / f"pack-{case}-{count}-{sizes[0]}-{sizes[1]}",
            lambda tmp: make_files(tmp, count, sizes),
        )
        measure(cheap(cfg), cmp, root, case)
    return cmp


def measure(cfg: Config, cmp: Comparison, root: Path, case: str) -> None:
    """Time both writers on the files of ``root``, then check that both tars hold them."""
    names = sorted(p.name for p in root.iterdir())
    sizes = [(root / n).stat().st_size for n in names]
    out = cfg.work / "runs" / "packing"
    out.mkdir(parents=True, exist_ok=True)
    gnu_tar, ours_tar = out / f"gnu-{case}.tar", out / f"ours-{case}.tar"
    gnu, ours = gnu_side(root, names, gnu_tar), ours_side(root, names, ours_tar)
    gnu(0)(), ours(0)()  # warm-up: the page cache holds the files for both
    log.info("%s: %d repeats", cmp.name, cfg.repeats)
    cpu: tuple[list[float], list[float]] = ([], [])
    alternate(cfg, cmp, cpu_timed(gnu, cpu[0]), cpu_timed(ours, cpu[1]))  # warm: no evicting
    equal, text = same_samples(tar_members([gnu_tar]), tar_members([ours_tar]))
    cmp.checks["same members"] = equal
    cmp.note = (
        f"{len(names)} files of {min(sizes) / 1000:.0f}-{max(sizes) / 1000:.0f} KB, "
        f"{sum(sizes) / 1e6:.0f} MB; {text}; warm page cache, both read the files and fsync "
        f"the tar; CPU time, medians: GNU tar {statistics.median(cpu[0]) * 1e3:.1f} ms, ours "
        f"{statistics.median(cpu[1]) * 1e3:.1f} ms"
    )


def cpu_timed(side: Side, seconds: list[float]) -> Side:
    """``side``, appending the CPU time of each run to ``seconds``."""

    def prepare(i: int) -> Callable[[], object]:
        run = side(i)

        def timed_run() -> None:
            before = cpu_time()
            run()
            seconds.append(cpu_time() - before)

        return timed_run

    return prepare


def cpu_time() -> float:
    """CPU seconds so far of this process (all its threads) and its waited-for children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cheap(cfg: Config) -> Config:
    """Packing is cheap: at least 5 repeats in a full run."""
    return cfg if cfg.smoke else dataclasses.replace(cfg, repeats=max(cfg.repeats, 5))


def make_files(root: Path, count: int, sizes: tuple[int, int]) -> None:
    """``count`` files of seeded random bytes (incompressible, like JPEGs) sized in ``sizes``."""
    rng = random.Random(f"packing:{count}:{sizes}")
    for i in range(count):
        (root / f"out-{i:06d}.jpg").write_bytes(rng.randbytes(rng.randint(*sizes)))


def gnu_side(root: Path, names: list[str], tar: Path) -> Side:
    """GNU tar of ``names`` (in this order) into ``tar``, then fsync it."""
    listing = tar.with_suffix(".list")
    listing.write_text("".join(f"{n}\n" for n in names))
    cmd = ["tar", *GNU_TAR_OPTIONS, "-cf", str(tar), "-C", str(root), "-T", str(listing)]

    def build() -> None:
        subprocess.run(cmd, check=True)
        fsync(tar)

    def prepare(_: int) -> Callable[[], object]:
        tar.unlink(missing_ok=True)
        return build

    return prepare


def fsync(path: Path) -> None:
    """Make ``path`` durable, as ``TarBuilder.close`` does for its tar."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ours_side(root: Path, names: list[str], tar: Path) -> Side:
    """Read each file and add it to a ``TarBuilder``, which fsyncs and renames on close."""

    def build() -> None:
        with TarBuilder(tar) as builder:
            for name in names:
                with open(root / name, "rb") as f:
                    builder.add(name, f.read())
            builder.close()

    def prepare(_: int) -> Callable[[], object]:
        tar.unlink(missing_ok=True)
        return build

    return prepare
