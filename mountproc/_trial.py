"""``mountproc try``: a job's setup and transform on a few files, in this process, nothing
published; each file's outputs described, or its full traceback."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mountproc._job import Job, Skip
from mountproc._shard import failures, sample

SHOWN_TEXT = 200


@dataclass(frozen=True)
class Trial:
    """What one file gave: its lines to show, and whether it failed."""

    path: Path
    lines: list[str]
    failed: bool


def try_files(
    job: Job, job_file: str, paths: list[Path], params: dict[str, Any], root: Path | None
) -> Iterator[Trial]:
    """Run ``job`` on each of ``paths`` (relative to ``root`` in its record, when given)."""
    for path in paths:
        yield _try_one(job, job_file, path, params, root)


def _try_one(
    job: Job, job_file: str, path: Path, params: dict[str, Any], root: Path | None
) -> Trial:
    try:
        outputs = job.apply(path, **params)
    except Skip as exc:
        return Trial(path, [f"  skipped: {exc or 'declined by the transform'}"], False)
    except Exception as exc:  # the transform's own error, from the job file's frames down
        lines = ["  FAILED", *failures.traceback_text(exc, job_file).rstrip().splitlines()]
        return Trial(path, lines, True)
    relpath = path.relative_to(root).as_posix() if root else path.name
    data = path.read_bytes()
    st = path.stat()
    record = sample.record(relpath, len(data), st.st_mtime_ns, hashlib.sha256(data).hexdigest())
    named = sample.members(relpath, sorted(outputs.items()), record)
    lines = [f"  {name}  {_describe(name, content)}" for name, content in named]
    return Trial(path, lines or ["  no outputs (no sample)"], False)


def _describe(name: str, content: bytes) -> str:
    """Bytes, and for an image its format, size and mode; for JSON or text, its start."""
    described = f"{len(content):,} bytes"
    image = _image(content)
    if image:
        return f"{described}, {image}"
    if name.endswith("json"):
        try:
            text = json.dumps(json.loads(content), sort_keys=True, ensure_ascii=False)
        except ValueError:
            text = content[:SHOWN_TEXT].decode("utf-8", "replace")
        return f"{described}: {_clip(text)}"
    return described


def _image(content: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError  # only when images are shown

    try:
        with Image.open(io.BytesIO(content)) as image:
            return f"{image.format} {image.width}x{image.height} {image.mode}"
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_TEXT else text[:SHOWN_TEXT] + "..."
