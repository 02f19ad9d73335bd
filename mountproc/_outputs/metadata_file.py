"""``valohai.metadata.jsonl``, shared by every writer of an outputs directory: a run replaces
only its own lines (the files it publishes), keeps every other line (another job's, the
user's), and rewrites the file whole (a temporary file, then a rename). It stays writable:
Valohai reads it at the end of the execution, and would upload a read-only one at once."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from mountproc._outputs.layout import METADATA_NAME

MODE = 0o644


def update(outputs: Path, work: Path, owned: Callable[[str], bool], lines: Iterable[str]) -> None:
    """Replace the lines of the files ``owned`` says are ours with ``lines`` (built in
    ``work``, then moved in)."""
    dest = outputs / METADATA_NAME
    kept = [line for line in _lines(dest) if not owned(_file_of(line))]
    text = "".join(line + "\n" for line in [*kept, *lines])
    if not text and not dest.exists():
        return
    tmp = work / f"{METADATA_NAME}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, MODE)
    _install(tmp, dest)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def _file_of(line: str) -> str:
    """The ``file`` a line describes ("" when it is not a mountproc-readable line: kept)."""
    try:
        data = json.loads(line)
    except ValueError:
        return ""
    name = data.get("file") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def _install(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` over ``dest``; across file systems, through a copy beside ``dest``."""
    try:
        os.replace(tmp, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    beside = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(tmp, beside)
        os.chmod(beside, MODE)
        os.replace(beside, dest)
    finally:
        beside.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
