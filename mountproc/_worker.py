"""Runs one shard: the transform on each file, outputs streamed into the shard's tar in scratch.

Plain data in, plain data out, no Dask import: it runs the same under a test, a LocalCluster
or a remote worker. A failing file becomes a ``FileResult``; only a broken job file or an
unwritable scratch directory fails the whole shard.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

from mountproc._errors import JobSetupError
from mountproc._job import Context, Job, Skip, SourceFile, load_job, normalize_outputs
from mountproc._packaging import TarBuilder, member_key
from mountproc._records import FileEntry, FileResult, ShardResult, ShardSpec, Status

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500

_STATE: dict[tuple[str, str], Any] = {}
_STATE_LOCK = threading.Lock()


def run_shard(spec: ShardSpec) -> ShardResult:
    """Process every file of ``spec`` and return the finished tar's facts and per-file results."""
    job = load_job(spec.job)
    params = job.params.model_validate_json(spec.params_json)
    state = _worker_state(job, spec, params)
    work_dir = Path(spec.work_dir)
    tmp_dir = work_dir / f"tmp-{spec.index:06d}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(params=params, state=state, shard=spec.index, tmp_dir=tmp_dir)
    results = []
    try:
        with TarBuilder(work_dir / spec.tar_name) as tar:
            for entry in spec.entries:
                results.append(_process(job, spec, entry, ctx, tar))
            sha, size = tar.close()
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ShardResult(
        index=spec.index,
        tar_path=str(tar.path),
        tar_name=spec.tar_name,
        sha256=sha,
        tar_bytes=size,
        results=tuple(results),
        worker=socket.gethostname(),
    )


def _worker_state(job: Job, spec: ShardSpec, params: Any) -> Any:
    """Run the job's setup once per worker process (and parameter set)."""
    if job.setup_fn is None:
        return None
    key = (spec.job.digest, spec.params_json)
    with _STATE_LOCK:
        if key not in _STATE:
            try:
                _STATE[key] = job.setup_fn(params)
            except Exception as exc:
                raise JobSetupError(
                    f"{spec.job.filename}: the job's setup failed on {socket.gethostname()}: "
                    f"{_reason(exc)}"
                ) from None
        return _STATE[key]


def _process(
    job: Job, spec: ShardSpec, entry: FileEntry, ctx: Context[Any], tar: TarBuilder
) -> FileResult:
    src = SourceFile(Path(spec.source_root) / entry.path, entry.path, entry.size, entry.mtime_ns)
    assert job.transform_fn is not None
    try:
        value = job.transform_fn(src, ctx)
        if value is None:
            return FileResult(entry.path, Status.SKIPPED, "declined by the transform")
        outputs = normalize_outputs(value)
    except Skip as exc:
        return FileResult(entry.path, Status.SKIPPED, _reason(exc) or "declined by the transform")
    except Exception as exc:
        return FileResult(entry.path, Status.FAILED, _reason(exc))
    key = member_key(entry.path)
    members = tuple(f"{key}.{suffix}" for suffix, _ in outputs)
    for name, (_, data) in zip(members, outputs, strict=True):
        tar.add(name, data)
    return FileResult(entry.path, Status.OK, None, members)


def _reason(exc: BaseException) -> str:
    """One line: the exception's type and message."""
    # one line of valid UTF-8: a path with undecodable bytes in a message would break Parquet
    text = " ".join(str(exc).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(exc, Skip):
        return text[:MAX_ERROR_CHARS]
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_CHARS] if text else type(exc).__name__
