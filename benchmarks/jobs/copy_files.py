"""Benchmark job: every file copied as it is (the work of the transform itself is negligible)."""

from __future__ import annotations

from mountproc import Context, Job, SourceFile

job = Job(name="copy-files")


@job.transform
def copy(src: SourceFile, ctx: Context[object]) -> dict[str, bytes]:
    """The file's bytes, as they were read."""
    return {"bin": src.read_bytes()}
