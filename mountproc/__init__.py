"""mountproc: batch preprocessing of huge datasets on network file systems, on Dask, for Valohai.

The public API: ``Job`` (with ``@job.transform``, ``@job.setup`` and ``job.apply``),
``SourceFile``, ``Context``, ``Skip``, ``NoParams``, ``run`` and its ``RunReport``,
``manifest`` (a run's manifest as a DataFrame), and the errors (``MountprocError`` and its
subclasses). Everything else is private."""

from __future__ import annotations

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
from mountproc._job import Context, Job, NoParams, Skip, SourceFile
from mountproc._records import RunReport

__version__ = "0.1.0"

from mountproc._api import run  # after __version__, which the runner reads
from mountproc._outputs.report import manifest

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
