"""How a failed file is recorded: one line of reason (type and message, the file named instead
of an in-memory buffer), and a bounded traceback that keeps the job file's own frames."""

from __future__ import annotations

import posixpath
import re
import traceback

from mountproc._job import Skip

MAX_ERROR_CHARS = 500
MAX_TRACEBACK_CHARS = 8000
LAST_FRAMES = 3  # kept from outside the job file too: where the error was raised
_BUFFER_RE = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def reason(exc: BaseException, relpath: str | None = None) -> str:
    """One line of valid UTF-8: the exception's type and message (a ``Skip``'s message alone).
    An in-memory buffer in the message (``SourceFile.open()`` serves one) becomes the file."""
    text = " ".join(str(exc).split())
    if relpath is not None:
        text = _BUFFER_RE.sub(lambda _: repr(relpath), text)
    # a path with undecodable bytes in a message would break Parquet
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(exc, Skip):
        return text[:MAX_ERROR_CHARS]
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_CHARS] if text else type(exc).__name__


def traceback_text(exc: BaseException, job_file: str) -> str:
    """The traceback of ``exc`` from the job file's first frame down (mountproc's own frames
    above it dropped), or its last few frames when the job file is not in it; at most
    ``MAX_TRACEBACK_CHARS`` (its end kept)."""
    summary = traceback.TracebackException.from_exception(exc)
    frames = list(summary.stack)
    first = next((i for i, f in enumerate(frames) if f.filename == job_file), None)
    kept = frames[first:] if first is not None else frames[-LAST_FRAMES:]
    summary.stack = traceback.StackSummary.from_list(kept)
    text = "".join(summary.format())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[-MAX_TRACEBACK_CHARS:]


def general(error: str, path: str) -> str:
    """``error`` with the file's own path and name replaced by ``<file>``, so that the same
    failure of many files reads the same."""
    for name in (repr(path), path, repr(posixpath.basename(path)), posixpath.basename(path)):
        if name:
            error = error.replace(name, "<file>")
    return error
