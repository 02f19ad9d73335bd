"""mountproc: batch preprocessing of huge datasets on network file systems, on Dask, for Valohai."""

from __future__ import annotations

from mountproc._errors import (
    ClusterError,
    FailureBudgetExceeded,
    JobFileError,
    JobSetupError,
    MountError,
    MountprocError,
    OutputsNotEmptyError,
    SettingsError,
    UsageError,
)
from mountproc._job import Context, Job, NoParams, Skip, SourceFile

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "Context",
    "FailureBudgetExceeded",
    "Job",
    "JobFileError",
    "JobSetupError",
    "MountError",
    "MountprocError",
    "NoParams",
    "OutputsNotEmptyError",
    "SettingsError",
    "Skip",
    "SourceFile",
    "UsageError",
    "__version__",
]
