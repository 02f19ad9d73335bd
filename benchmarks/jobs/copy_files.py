"""Benchmark job: every file copied as it is (the work of the transform itself is negligible)."""

from __future__ import annotations

from mountproc import Context, Job, NoParams, SourceFile

job = Job(name="copy-files")


@job.transform
def copy(src: SourceFile, ctx: Context[NoParams]) -> dict[str, bytes]:
    """The file's bytes, as they were read."""
    return {"bin": src.read_bytes()}
