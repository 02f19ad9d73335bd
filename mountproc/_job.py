"""The user-facing job API: ``Job``, ``SourceFile``, ``Context``, ``Skip``, ``NoParams``; and
``Job.apply``, which tries a transform on one file in this process."""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import TypeVar

from mountproc._errors import JobFileError, SettingsError
from mountproc._shard.sample import RECORD_SUFFIX, normalize_outputs, uses_reserved

P = TypeVar("P", bound=BaseModel)
S = TypeVar("S", default=Any)

DEFAULT_EXCLUDES = (
    "._*",  # macOS resource forks (AppleDouble) on shares written from a Mac
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",  # Synology's thumbnails and indexes
    ".snapshot",  # NetApp's and others' snapshot directories
    "lost+found",
)
"""Names no job wants as input, excluded unless ``Job(default_excludes=False)``."""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DATASET_RE = re.compile(r"^dataset://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class NoParams(BaseModel):
    """The parameters of a job that declares none."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when a job is loaded


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
class Context(Generic[P, S]):
    """What a transform gets besides the file: typed parameters, the per-worker state (what
    setup returned; ``Context[Params, Model]`` types it), the shard's index, and a private
    temporary directory inside the shard's scratch area."""

    params: P
    state: S
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
    default_excludes: bool = True
    requirements: Iterable[str] = ()  # what the transform imports besides mountproc (pip specs)
    transform_fn: Transform | None = None
    setup_fn: Setup | None = None
    _states: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.include = tuple(self.include)
        self.exclude = tuple(self.exclude)
        self.requirements = tuple(self.requirements)
        self.settings = dict(self.settings)
        self.validate()

    def transform(self, fn: Transform) -> Transform:
        """Decorator: register the per-file transform (once: a second one is an error)."""
        self._refuse_second("transform", self.transform_fn, fn)
        self.transform_fn = fn
        return fn

    def setup(self, fn: Setup) -> Setup:
        """Decorator: register a function called once per worker with the parameters; what it
        returns is ``ctx.state`` for every file that worker processes (once: a second one is an
        error)."""
        self._refuse_second("setup", self.setup_fn, fn)
        self.setup_fn = fn
        return fn

    def _refuse_second(
        self, what: str, old: Callable[..., Any] | None, new: Callable[..., Any]
    ) -> None:
        if old is not None:
            raise JobFileError(
                f"job {self.name!r} already has a {what}, {_name(old)}: @job.{what} on "
                f"{_name(new)} would replace it; keep one (call helpers from it)"
            )

    def apply(self, path: str | Path, /, **params: Any) -> dict[str, bytes]:
        """Try the transform on one file in this process: setup runs once per parameter set
        (kept on this ``Job``), then the transform; returns the outputs by suffix as the tar
        would hold them (without the sample's ``.json`` record). A declined file raises
        ``Skip``; the transform's own exception propagates, traceback and all."""
        if self.transform_fn is None:
            raise JobFileError(f"job {self.name!r} has no transform (use @job.transform)")
        parsed = self.parse_params(params)
        src = _source_file(Path(path))
        with tempfile.TemporaryDirectory(prefix="mountproc-apply-") as tmp:
            ctx: Context[Any] = Context(parsed, self._state(parsed), 0, Path(tmp))
            value = self.transform_fn(src, ctx)
            if value is None:
                raise Skip("declined by the transform")
            outputs = normalize_outputs(value)
        if uses_reserved(outputs):
            raise JobFileError(
                f"the transform returned an output named {RECORD_SUFFIX!r}, which mountproc "
                f"writes itself: give it another name, e.g. 'meta.{RECORD_SUFFIX}'"
            )
        return dict(outputs)

    def _state(self, params: BaseModel) -> Any:
        """What setup returned for these parameters (run once)."""
        if self.setup_fn is None:
            return None
        key = params.model_dump_json()
        if key not in self._states:
            self._states[key] = self.setup_fn(params)
        return self._states[key]

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
        for spec in self.requirements:
            if not isinstance(spec, str) or not spec.strip() or "\n" in spec:
                raise JobFileError(
                    f"Job(requirements=...) holds pip requirements such as 'pydicom>=3.0', "
                    f"not {spec!r}"
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


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__qualname__', fn)!s}()"


def _source_file(path: Path) -> SourceFile:
    """A file given to ``Job.apply``, read (and hashed) as a worker reads it."""
    st = path.stat()
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return SourceFile(path.absolute(), path.name, st.st_size, st.st_mtime_ns, data, sha)
