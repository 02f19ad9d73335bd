"""The idiomatic Ray Data script a Ray user would write instead of mountproc.

``ray.data.read_binary_files(SOURCE_DIR, include_paths=True)`` over the job's file extensions,
``flat_map`` of the Pool script's transform over each file's bytes (the job file's very
``resize``, on the bytes Ray read, hashed, with the same JSON record), and
``write_webdataset`` of the samples, at least ``--files-per-tar`` samples to a tar. Members are
named as mountproc names them (``<key>.jpg``, ``<key>.json``), so that the samples of both can
be compared name for name; Ray's tar headers (mtime, mode, owner) are its own. A file that
fails is logged (in Ray's worker logs) and has no sample.

Ray is not a dependency of mountproc: the benchmark runs this script with the Python of a
virtualenv of its own that has ``ray[data]`` installed.

    python raydata_resize.py JOB_FILE SOURCE_DIR OUTPUT_DIR [--files-per-tar N]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import ray  # type: ignore[import-not-found,unused-ignore]  # not installed beside mountproc

from benchmarks.baselines import pool_resize
from mountproc import SourceFile
from mountproc._shard.sample import member_key

log = logging.getLogger(__name__)


def resize(row: dict[str, Any], job_file: str, source: str) -> list[dict[str, Any]]:
    """One file's sample (``__key__``, ``jpg``, ``json``), or none if it fails; the job is
    loaded once per Ray worker process."""
    if pool_resize._JOB is None:
        pool_resize.init_worker(job_file, source)
    job, ctx = pool_resize._JOB, pool_resize._CTX
    if job is None or job.transform_fn is None or ctx is None:
        raise RuntimeError(f"{job_file} has no transform")
    path, data = row["path"], row["bytes"]
    relpath = os.path.relpath(path, source).replace(os.sep, "/")
    try:
        st = os.stat(path)
        digest = hashlib.sha256(data).hexdigest()
        src = SourceFile(Path(path), relpath, st.st_size, st.st_mtime_ns, data=data, sha256=digest)
        outputs = job.transform_fn(src, ctx)
        if outputs is None:
            log.warning("%s: declined by the transform", relpath)
            return []
        text = pool_resize.record_json(relpath, st, digest)
        return [{"__key__": member_key(relpath), **outputs, "json": text}]
    except Exception as exc:  # a bad file is noted, the run goes on
        log.warning("%s: %s: %s", relpath, type(exc).__name__, exc)
        return []


def main(argv: list[str] | None = None) -> None:
    """Transform every file of SOURCE_DIR with the job's extensions on Ray Data, into tars."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_file")
    parser.add_argument("source")
    parser.add_argument("outputs", type=Path)
    parser.add_argument("--files-per-tar", type=int, default=1000)
    args = parser.parse_args(argv)
    args.outputs.mkdir(parents=True, exist_ok=True)
    patterns = pool_resize.load_job(args.job_file).include
    extensions = [p.removeprefix("*.") for p in patterns]
    source = os.path.abspath(args.source)
    ds = ray.data.read_binary_files(source, include_paths=True, file_extensions=extensions)
    ds = ds.flat_map(resize, fn_args=(args.job_file, source))
    # encoder=None: the values are the bytes and text to store (Ray's default encoder would
    # want PIL images for .jpg)
    ds.write_webdataset(str(args.outputs), encoder=None, min_rows_per_file=args.files_per_tar)


if __name__ == "__main__":
    main()
