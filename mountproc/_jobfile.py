"""Job files: read (their text travels to the workers, who need not have the file), executed as
a module once per process, and their one ``Job`` found. A ``Job`` made in Python without a file
(a notebook) travels pickled by value instead."""

from __future__ import annotations

import ast
import hashlib
import pickle
import sys
import threading
import types
from dataclasses import replace
from pathlib import Path

import cloudpickle

from mountproc._errors import JobFileError
from mountproc._job import Job
from mountproc._records import JobRef

_LOADED: dict[str, Job] = {}
_REFS: dict[int, JobRef] = {}  # id of a loaded or given Job -> how it travels
_LOAD_LOCK = threading.Lock()  # worker threads of one process load a job once


def read_job_file(path: str | Path) -> JobRef:
    """Read a job file into a ``JobRef`` (its text travels to workers)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(f"job file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"job file {str(p)!r} cannot be read: {exc}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return JobRef(filename=str(p.resolve()), source=text, digest=digest)


def load_job(ref: JobRef) -> Job:
    """Execute a job file's text as a module (once per process) and return its ``Job``."""
    with _LOAD_LOCK:
        cached = _LOADED.get(ref.digest)
        if cached is None:
            job = _unpickle(ref) if ref.pickled else _find_job(ref, _exec_module(ref))
            cached = _LOADED[ref.digest] = job
            _REFS[id(job)] = ref
        return cached


def job_ref(job: Job | str | Path) -> tuple[JobRef, Job]:
    """The job to run and how it travels: a job file's path, a ``Job`` loaded from one, or a
    ``Job`` made in Python (pickled by value, with its module's code unless that is
    ``__main__``, which cloudpickle ships by value anyway)."""
    if not isinstance(job, Job):
        ref = read_job_file(job)
        return ref, load_job(ref)
    known = _REFS.get(id(job))
    if known is not None:
        return known, job
    _check_complete(job, "the Job given")
    module = sys.modules.get(getattr(job.transform_fn, "__module__", "") or "")
    by_value = module is not None and module.__name__ != "__main__"
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        data = cloudpickle.dumps(replace(job))  # a copy without what apply() set up
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)
    ref = JobRef(
        filename=f"<job {job.name}>",
        source="",
        digest=hashlib.sha256(data).hexdigest(),
        pickled=data,
    )
    with _LOAD_LOCK:
        _LOADED.setdefault(ref.digest, job)
        _REFS[id(job)] = ref
    return ref, job


def _unpickle(ref: JobRef) -> Job:
    try:
        job = pickle.loads(ref.pickled or b"")
    except Exception as exc:
        raise JobFileError(
            f"{ref.filename}: cannot be unpickled here: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(job, Job):
        raise JobFileError(f"{ref.filename}: not a mountproc.Job")
    return job


def _check_complete(job: Job, where: str) -> None:
    if job.transform_fn is None:
        raise JobFileError(f"{where}: job {job.name!r} has no transform (use @job.transform)")


def _find_job(ref: JobRef, module: types.ModuleType) -> Job:
    jobs = [v for v in vars(module).values() if isinstance(v, Job)]
    if len(jobs) != 1:
        raise JobFileError(f"{ref.filename}: expected exactly one mountproc.Job, found {len(jobs)}")
    _check_complete(jobs[0], ref.filename)
    return jobs[0]


def _exec_module(ref: JobRef) -> types.ModuleType:
    name = f"mountproc_job_{ref.digest[:16]}"
    module = types.ModuleType(name)
    module.__file__ = ref.filename
    sys.modules[name] = module  # pydantic and dataclasses look their module up by name
    try:
        code = compile(ref.source, ref.filename, "exec")
        exec(code, module.__dict__)
    except Exception as exc:
        del sys.modules[name]
        # one line: exception messages (pydantic's among them) may span several
        text = " ".join(_describe(exc, ref.filename).split())
        raise JobFileError(f"{ref.filename}: {text}") from None
    return module


def _describe(exc: BaseException, filename: str) -> str:
    if isinstance(exc, SyntaxError):
        return f"line {exc.lineno}: SyntaxError: {exc.msg}"
    line = None
    tb = exc.__traceback__
    while tb is not None:  # the deepest frame that is the job file itself
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f"line {line}: " if line else ""
    if isinstance(exc, JobFileError):  # already says what is wrong; add only where
        return f"{where}{exc}"
    return f"{where}{type(exc).__name__}: {exc}"


def code_digest(ref: JobRef) -> str:
    """The digest of the job's code, comments, docstrings and formatting aside: what a run's
    outputs depend on (a pickled job: its pickle's)."""
    if ref.pickled is not None:
        return ref.digest
    try:
        tree = ast.parse(ref.source)
    except SyntaxError:
        return ref.digest
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )
