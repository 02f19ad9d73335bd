"""mountproc: batch preprocessing of huge datasets on network file systems, on Dask, for Valohai."""

from __future__ import annotations

from mountproc._errors import (
    ClusterError,
    DiskFullError,
    FailureBudgetExceeded,
    JobFileError,
    JobSetupError,
    MountError,
    MountprocError,
    OutputsNotEmptyError,
    RunAbortedError,
    SettingsError,
    SourceLostError,
    UsageError,
    VerificationFailed,
    WorkerMountError,
    WorkersLostError,
)
from mountproc._job import Context, Job, NoParams, Skip, SourceFile

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "Context",
    "DiskFullError",
    "FailureBudgetExceeded",
    "Job",
    "JobFileError",
    "JobSetupError",
    "MountError",
    "MountprocError",
    "NoParams",
    "OutputsNotEmptyError",
    "RunAbortedError",
    "SettingsError",
    "Skip",
    "SourceFile",
    "SourceLostError",
    "UsageError",
    "VerificationFailed",
    "WorkerMountError",
    "WorkersLostError",
    "__version__",
]
