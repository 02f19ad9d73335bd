"""mountproc: batch preprocessing of huge datasets on network file systems, on Dask, for Valohai.

The public API: ``Job`` (with ``@job.transform``, ``@job.setup`` and ``job.apply``),
``SourceFile``, ``Context``, ``Skip``, ``NoParams``, ``run`` and its ``RunReport``,
``manifest`` (a run's manifest as a DataFrame), and the errors (``MountprocError`` and its
subclasses). Everything else is private."""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from mountproc._errors import (
    ClusterError,
    DiskFullError,
    FailureBudgetExceeded,
    FilesFailed,
    JobFileError,
    JobSetupError,
    MountError,
    MountprocError,
    OutputsNotEmptyError,
    RunAbortedError,
    RunInterrupted,
    RunLockedError,
    SettingsError,
    SourceLostError,
    StoppedEarly,
    UsageError,
    VerificationFailed,
    WorkerMountError,
    WorkersLostError,
)

__version__ = "0.1.0"

_LAZY = {
    "Context": "mountproc._job",
    "Job": "mountproc._job",
    "NoParams": "mountproc._job",
    "Skip": "mountproc._job",
    "SourceFile": "mountproc._job",
    "RunReport": "mountproc._records",
    "run": "mountproc._api",
    "manifest": "mountproc._outputs.report",
}
"""Names imported on first use: ``mountproc --help`` needs none of them, and ``Job`` alone
brings pydantic."""

if _typing.TYPE_CHECKING:
    from mountproc._api import run
    from mountproc._job import Context, Job, NoParams, Skip, SourceFile
    from mountproc._outputs.report import manifest
    from mountproc._records import RunReport


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mountproc' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ClusterError",
    "Context",
    "DiskFullError",
    "FailureBudgetExceeded",
    "FilesFailed",
    "Job",
    "JobFileError",
    "JobSetupError",
    "MountError",
    "MountprocError",
    "NoParams",
    "OutputsNotEmptyError",
    "RunAbortedError",
    "RunInterrupted",
    "RunLockedError",
    "RunReport",
    "SettingsError",
    "Skip",
    "SourceFile",
    "SourceLostError",
    "StoppedEarly",
    "UsageError",
    "VerificationFailed",
    "WorkerMountError",
    "WorkersLostError",
    "__version__",
    "manifest",
    "run",
]
