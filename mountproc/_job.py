"""The user-facing job API (``Job``, ``SourceFile``, ``Context``, ``Skip``) and job-file loading."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mountproc._errors import JobFileError, SettingsError
from mountproc._records import JobRef

P = TypeVar("P", bound=BaseModel)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}(\.[A-Za-z0-9][A-Za-z0-9_-]{0,31})*$")
_DATASET_RE = re.compile(r"^dataset://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class NoParams(BaseModel):
    """The parameters of a job that declares none."""

    model_config = ConfigDict(extra="forbid")


class Skip(Exception):
    """Raised by a transform to decline a file; it is recorded as ``skipped`` with the reason."""


@dataclass(frozen=True)
class SourceFile:
    """One source file handed to a transform: read it, never write it.

    mountproc has usually read the file already (while the previous file was transformed):
    ``open()`` and ``read_bytes()`` then serve those bytes from memory, and ``sha256`` is their
    checksum. Reading ``path`` directly works too, but reads the file from the mount again."""

    path: Path
    relpath: str
    size: int
    mtime_ns: int
    data: bytes | None = field(default=None, repr=False, compare=False)
    sha256: str | None = None

    def open(self) -> IO[bytes]:
        """Open the file for binary reading."""
        if self.data is not None:
            return io.BytesIO(self.data)
        return self.path.open("rb")

    def read_bytes(self) -> bytes:
        """Read the whole file."""
        if self.data is not None:
            return self.data
        return self.path.read_bytes()


@dataclass(frozen=True)
class Context(Generic[P]):
    """What a transform gets besides the file: typed parameters, the per-worker state, and a
    private temporary directory inside the shard's scratch area."""

    params: P
    state: Any
    shard: int
    tmp_dir: Path


Transform = Callable[[SourceFile, Context[Any]], "Mapping[str, Any] | None"]
Setup = Callable[[Any], Any]


@dataclass
class Job:
    """A preprocessing job: where the files are, which ones, and what to do with each.

    The transform is called once per file with ``(SourceFile, Context)`` and returns a mapping
    from output suffix (``"jpg"``, ``"json"``) to content (``bytes``, ``str``, or for a suffix
    ending in ``json`` any JSON-serialisable value), ``{}`` for no outputs, or ``None`` (or raises
    ``Skip``) to decline the file. mountproc decides where outputs go and how members are named.
    """

    name: str
    source: str | None = None
    include: Iterable[str] = ("*",)
    exclude: Iterable[str] = ()
    dataset: str | None = None
    params: type[BaseModel] = NoParams
    readonly: bool = True
    settings: Mapping[str, Any] = field(default_factory=dict)
    transform_fn: Transform | None = None
    setup_fn: Setup | None = None

    def __post_init__(self) -> None:
        self.include = tuple(self.include)
        self.exclude = tuple(self.exclude)
        self.settings = dict(self.settings)
        self.validate()

    def transform(self, fn: Transform) -> Transform:
        """Decorator: register the per-file transform."""
        self.transform_fn = fn
        return fn

    def setup(self, fn: Setup) -> Setup:
        """Decorator: register a function called once per worker with the parameters; what it
        returns is ``ctx.state`` for every file that worker processes."""
        self.setup_fn = fn
        return fn

    def validate(self) -> None:
        """Raise ``JobFileError`` for an invalid declaration."""
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise JobFileError(
                f"job name {self.name!r} is invalid: use lowercase letters, digits, '-' and '_'"
            )
        if self.dataset is not None:
            try:
                check_dataset_uri(self.dataset, "Job(dataset=...)")
            except SettingsError as exc:
                raise JobFileError(str(exc)) from None
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise JobFileError("Job(params=...) must be a pydantic BaseModel subclass")
        for pattern in (*self.include, *self.exclude):
            if not isinstance(pattern, str) or not pattern:
                raise JobFileError(
                    f"include/exclude patterns must be non-empty strings: {pattern!r}"
                )

    def parse_params(self, values: Mapping[str, Any]) -> BaseModel:
        """Validate job parameters; an invalid one raises ``SettingsError`` naming it."""
        known = set(self.params.model_fields)
        unknown = sorted(set(values) - known)
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise SettingsError(f"unknown job parameter {unknown[0]!r} (this job has: {names})")
        try:
            return self.params.model_validate(dict(values))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "params"
            raise SettingsError(f"job parameter {where!r}: {err['msg']}") from None


def check_dataset_uri(uri: str, setting: str) -> str:
    """Return ``uri`` if it is ``dataset://name/version``, else raise ``SettingsError``."""
    if not _DATASET_RE.match(uri):
        raise SettingsError(f"{setting}: {uri!r} is not of the form dataset://<name>/<version>")
    return uri


def normalize_outputs(value: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Turn a transform's return value into ``(suffix, bytes)`` pairs sorted by suffix."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"transform must return a mapping of suffix to content, not {type(value).__name__}"
        )
    out: list[tuple[str, bytes]] = []
    for suffix, content in value.items():
        if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix):
            raise ValueError(
                f"invalid output suffix {suffix!r}: use letters, digits, '-', '_', '.'"
            )
        out.append((suffix, _encode(suffix, content)))
    return sorted(out)


def _encode(suffix: str, content: Any) -> bytes:
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    if isinstance(content, str):
        return content.encode("utf-8")
    if suffix.endswith("json"):
        # a path with undecodable bytes holds lone surrogates: write them as JSON's \udcNN
        # escapes, which decode back to the same string
        text = json.dumps(content, sort_keys=True, ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace")
    raise TypeError(f"output {suffix!r} must be bytes or str, not {type(content).__name__}")


_LOADED: dict[str, Job] = {}
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
            cached = _LOADED[ref.digest] = _find_job(ref, _exec_module(ref))
        return cached


def _find_job(ref: JobRef, module: types.ModuleType) -> Job:
    jobs = [v for v in vars(module).values() if isinstance(v, Job)]
    if len(jobs) != 1:
        raise JobFileError(f"{ref.filename}: expected exactly one mountproc.Job, found {len(jobs)}")
    job = jobs[0]
    if job.transform_fn is None:
        raise JobFileError(
            f"{ref.filename}: job {job.name!r} has no transform (use @job.transform)"
        )
    return job


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
