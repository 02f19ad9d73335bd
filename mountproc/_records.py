"""Plain, picklable records that flow between the stages and over the Dask cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

NOT_PROCESSED = "not processed: the run ended before this shard finished"
"""The reason of a selected file that no shard processed (the run stopped first)."""

CARRIED = "unchanged since the base version: carried over"
"""The plan's mark on a file an increment carries over from its base version (``--since``): not
processed again, its manifest row and its sample those of the base version."""


class Status(str, Enum):
    """What happened to one listed entry."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # declined by the transform
    EXCLUDED = "excluded"  # never selected: patterns, symlinks, non-regular entries


class Kind(str, Enum):
    """The kind of a directory entry, as the crawl saw it (symlinks are never followed)."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    DEVICE = "device"
    OTHER = "other"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class FileEntry:
    """One listed regular file: path relative to the source root (``str`` with surrogates
    for non-UTF-8 bytes, exactly as ``os.scandir`` returns it)."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class JobRef:
    """A job as it travels to workers: its file's text, so workers need not have the file, or
    (a ``Job`` made in Python) the job pickled by value."""

    filename: str
    source: str
    digest: str
    pickled: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SourceView:
    """The facts about the source's mount that every machine of a run must see alike."""

    mount_point: str
    fstype: str
    source: str
    readonly: bool
    on_mount: bool


@dataclass(frozen=True)
class WorkerCheck:
    """What a worker verifies before its first shard: it sees the source as the driver does,
    and it sees the scratch directory (a token file the driver wrote there)."""

    source: str
    view: SourceView
    token_path: str
    token: str
    timeout_s: float
    remote: bool = False  # an on-demand input: no source directory to see, only scratch


@dataclass(frozen=True)
class Limits:
    """Time limits a worker enforces: per file, and for probing a mount."""

    file_timeout_s: float = 0.0  # 0: no limit
    mount_timeout_s: float = 30.0


@dataclass(frozen=True)
class StopRules:
    """When a worker gives up on its shard, and the run stops: more failed files than the whole
    run may have, or its first files all failing the same way (a broken transform)."""

    max_failed: int | None = None  # None: --keep-going
    same_first: int = 0  # 0: --keep-going


@dataclass(frozen=True)
class RemoteFiles:
    """Where a worker downloads a shard's files from (an on-demand Valohai input): one URL per
    entry, and Valohai's ``input_request`` endpoint that renews expired ones."""

    input_name: str
    input_id: str | None
    urls: tuple[str, ...]
    renew_url: str | None = None
    renew_method: str = "POST"
    renew_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs to run one shard, and nothing that needs the driver."""

    index: int
    job: JobRef
    params_json: str
    source_root: str
    work_dir: str
    tar_name: str
    entries: tuple[FileEntry, ...]
    check: WorkerCheck | None = None
    limits: Limits = field(default_factory=Limits)
    stop: StopRules = field(default_factory=StopRules)
    remote: RemoteFiles | None = None  # the files are downloaded, not read from source_root


@dataclass(frozen=True)
class FileResult:
    """The outcome for one file of a shard."""

    path: str
    status: Status
    error: str | None = None
    members: tuple[str, ...] = ()
    changed: bool = False  # size or mtime differ from the listing's: the file changed meanwhile
    traceback: str | None = None  # of a failed file: bounded, the job file's frames kept
    sha256: str | None = None  # of the source file's bytes, where it was read


@dataclass(frozen=True)
class ShardResult:
    """The outcome of one shard: the tar it built in scratch and one result per file."""

    index: int
    tar_path: str
    tar_name: str
    sha256: str
    tar_bytes: int
    results: tuple[FileResult, ...] = field(default=())
    worker: str = ""
    scratch_shared: bool = True  # False: the tar is on the worker's own disk, to be copied over
    stopped: str | None = None  # why the worker gave up on the shard (no tar): the run stops
    md5: str = ""  # of the tar: what wids checks a shard by

    @property
    def files_ok(self) -> int:
        """Files whose transform succeeded."""
        return sum(1 for r in self.results if r.status is Status.OK)

    @property
    def files_failed(self) -> int:
        """Files whose transform failed."""
        return sum(1 for r in self.results if r.status is Status.FAILED)

    @property
    def member_count(self) -> int:
        """Tar members written for this shard."""
        return sum(len(r.members) for r in self.results)


@dataclass(frozen=True)
class RunReport:
    """What a run did: ``summary`` (as in ``<job>-summary.json``: counts, timings, the mount
    found, parameters), whether it held its failure budget, and where it published."""

    summary: dict[str, Any]
    within_budget: bool
    outputs: Path


def display_path(path: str) -> str:
    """A valid-UTF-8 rendering of a path (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
