"""A competent hand-written ``multiprocessing.Pool`` script that does what ``mountproc run`` does.

It imports the job file and calls its very transform on every file of a sorted walk (``imap``
in chunks, in order), reading each file once, hashing what it read and handing those bytes to
the transform. The parent writes the samples into reproducible PAX tars of at most
``--shard-files`` samples each (``<key>.jpg`` then ``<key>.json``, members named as mountproc
names them, fixed metadata), fsyncing each tar. A file that fails is listed in ``failures.txt``.

    python pool_resize.py JOB_FILE SOURCE_DIR OUTPUT_DIR [--processes N] [--chunksize N]
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import IO, Any

from mountproc import Context, Job, SourceFile

# mountproc's member names (source path escaped into a WebDataset key), so that the samples
# of this script and of mountproc can be compared name for name
from mountproc._shard.sample import member_key

Member = tuple[str, bytes]
_JOB: Job | None = None
_CTX: Context[Any] | None = None
_SOURCE = ""


def load_job(job_file: str) -> Job:
    """Import the job file as a module and return its ``mountproc.Job``."""
    spec = importlib.util.spec_from_file_location("pool_resize_job", job_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {job_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic looks the module of its models up by name
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, Job))


def init_worker(job_file: str, source: str) -> None:
    """Per pool process: load the job once, run its setup, keep the context."""
    global _JOB, _CTX, _SOURCE
    _JOB, _SOURCE = load_job(job_file), source
    params = _JOB.params()
    state = _JOB.setup_fn(params) if _JOB.setup_fn else None
    _CTX = Context(params=params, state=state, shard=0, tmp_dir=Path(tempfile.mkdtemp()))


def walk(source: str, patterns: tuple[str, ...]) -> Iterator[str]:
    """Paths relative to ``source`` of the files whose name matches a pattern, sorted."""
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            if any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns):
                yield os.path.relpath(os.path.join(root, name), source).replace(os.sep, "/")


def record_json(relpath: str, st: os.stat_result, digest: str) -> str:
    """The sample's JSON record, as mountproc writes it (the path's exact bytes in ``path_b64``)."""
    raw = os.fsencode(relpath)
    record = {
        "mtime_ns": st.st_mtime_ns,
        "path": raw.decode("utf-8", "backslashreplace"),
        "path_b64": base64.b64encode(raw).decode("ascii"),
        "sha256": digest,
        "size": st.st_size,
    }
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def process(relpath: str) -> tuple[str, list[Member] | None, str]:
    """Read, hash and transform one file; return its members, or None and the error."""
    transform = _JOB.transform_fn if _JOB is not None else None
    if transform is None or _CTX is None:
        raise RuntimeError("the pool process was not initialised (init_worker)")
    path = os.path.join(_SOURCE, relpath)
    try:
        with open(path, "rb", buffering=0) as f:
            data = f.readall()
            st = os.fstat(f.fileno())
        digest = hashlib.sha256(data).hexdigest()
        src = SourceFile(Path(path), relpath, st.st_size, st.st_mtime_ns, data=data, sha256=digest)
        outputs = transform(src, _CTX)
        if outputs is None:
            return relpath, None, "declined by the transform"
        contents = {**outputs, "json": record_json(relpath, st, digest)}
        key = member_key(relpath)
        return relpath, [(f"{key}.{s}", _bytes(c)) for s, c in sorted(contents.items())], ""
    except Exception as exc:  # a bad file is noted, the run goes on
        return relpath, None, f"{type(exc).__name__}: {exc}"


def _bytes(content: bytes | str) -> bytes:
    return content if isinstance(content, bytes) else content.encode("utf-8", "backslashreplace")


class TarWriter:
    """Reproducible PAX tars of at most ``per_tar`` samples: ``pool-000000.tar``, ... (or
    ``<prefix>-<first>.tar``, ...)."""

    def __init__(self, outputs: Path, per_tar: int, prefix: str = "pool", first: int = 0) -> None:
        self.outputs, self.per_tar, self.prefix = outputs, per_tar, prefix
        self.count, self.samples = first, 0
        self._raw: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None

    def add(self, members: list[Member]) -> None:
        """Add one sample's members, starting a new tar when the current one is full."""
        if self._tar is None:
            path = self.outputs / f"{self.prefix}-{self.count:06d}.tar"
            self._raw = open(path, "wb")  # noqa: SIM115
            self._tar = tarfile.open(fileobj=self._raw, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        if self.samples == self.per_tar:
            self.close()

    def close(self) -> None:
        """Finish and fsync the current tar, if any."""
        if self._tar is None or self._raw is None:
            return
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._tar = self._raw = None
        self.count, self.samples = self.count + 1, 0


def main(argv: list[str] | None = None) -> None:
    """Transform every matching file of SOURCE_DIR on a pool and tar the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_file")
    parser.add_argument("source")
    parser.add_argument("outputs", type=Path)
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--chunksize", type=int, default=8)
    parser.add_argument("--shard-files", type=int, default=1000)
    args = parser.parse_args(argv)
    args.outputs.mkdir(parents=True, exist_ok=True)
    patterns = tuple(load_job(args.job_file).include)
    writer = TarWriter(args.outputs, args.shard_files)
    failures = []
    init = (args.job_file, args.source)
    with Pool(args.processes, initializer=init_worker, initargs=init) as pool:
        files = walk(args.source, patterns)
        for relpath, members, error in pool.imap(process, files, chunksize=args.chunksize):
            if members is None:
                failures.append(f"{relpath}\t{error}\n")
            else:
                writer.add(members)
    writer.close()
    (args.outputs / "failures.txt").write_text("".join(failures))


if __name__ == "__main__":
    main()
