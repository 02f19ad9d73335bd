"""The idiomatic dask.bag script a Dask user would write instead of mountproc, on the same engine.

A ``LocalCluster`` of single-thread worker processes; ``db.from_sequence(paths,
npartitions=...).map(resize)`` over the sorted walk; one reproducible tar per partition, written
on its worker. ``resize`` is the Pool script's: each file read once, hashed, handed to the job
file's very transform, its members named as mountproc names them (so that the samples of both
can be compared name for name). A file that fails is listed in ``failures.txt``.

    python daskbag_resize.py JOB_FILE SOURCE_DIR OUTPUT_DIR [--workers N] [--files-per-tar N]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import dask.bag as db
from dask.base import compute
from dask.delayed import delayed
from distributed import Client, LocalCluster

from benchmarks.baselines import pool_resize

Result = tuple[str, list[pool_resize.Member] | None, str]


def resize(relpath: str, job_file: str, source: str) -> Result:
    """One file, on a worker: the job is loaded once per worker process."""
    if pool_resize._JOB is None:
        pool_resize.init_worker(job_file, source)
    return pool_resize.process(relpath)


def write_tar(results: list[Result], outputs: Path, index: int) -> list[str]:
    """One partition's samples into ``bag-<index>.tar``; return its failures' lines."""
    writer = pool_resize.TarWriter(outputs, len(results) + 1, prefix="bag", first=index)
    failures = []
    for relpath, members, error in results:
        if members is None:
            failures.append(f"{relpath}\t{error}\n")
        else:
            writer.add(members)
    writer.close()
    return failures


def main(argv: list[str] | None = None) -> None:
    """Transform every matching file of SOURCE_DIR on a local Dask cluster, a tar per partition."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_file")
    parser.add_argument("source")
    parser.add_argument("outputs", type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--files-per-tar", type=int, default=1000)
    args = parser.parse_args(argv)
    args.outputs.mkdir(parents=True, exist_ok=True)
    paths = list(pool_resize.walk(args.source, tuple(pool_resize.load_job(args.job_file).include)))
    partitions = max(1, math.ceil(len(paths) / args.files_per_tar))
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as lc,
        Client(lc),
    ):
        bag = db.from_sequence(paths, npartitions=partitions)
        samples = bag.map(resize, args.job_file, args.source)
        tars = [delayed(write_tar)(p, args.outputs, i) for i, p in enumerate(samples.to_delayed())]
        failures = compute(*tars)
    (args.outputs / "failures.txt").write_text("".join(line for f in failures for line in f))


if __name__ == "__main__":
    main()
