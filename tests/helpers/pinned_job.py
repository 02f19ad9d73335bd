"""The job of the pinned tree: a job file (its text is ``pinned.JOB``) and, imported, a ``Job``
made in Python."""

from __future__ import annotations

from mountproc import Context, Job, NoParams, SourceFile

job = Job(name="pinned", include=["*.txt", "*.bin"])


@job.transform
def upper(src: SourceFile, ctx: Context[NoParams]) -> dict[str, object] | None:
    data = src.read_bytes()
    if data.startswith(b"bad"):
        raise ValueError("bad file")
    if data.startswith(b"skip"):
        return None
    return {"txt": data.upper(), "meta.json": {"n": len(data), "shard": ctx.shard}}
