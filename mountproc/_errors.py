"""The exception tree of mountproc; each class carries the exit code the CLI uses.

    MountprocError (1)
    ├── UsageError (2) ........... the user must change something before a run can start
    │   ├── SettingsError ........ an invalid setting, named
    │   ├── JobFileError ......... the job file cannot be loaded or declares an invalid job
    │   │   └── JobSetupError .... the job's per-worker setup raised
    │   ├── MountError ........... the mount preflight failed for a path
    │   │   └── WorkerMountError . a worker sees the source differently from this machine
    │   ├── OutputsNotEmptyError . outputs already hold results of this job
    │   └── RunLockedError ....... another run of this job into these outputs is running
    ├── FailureBudgetExceeded (1)  more files failed than --max-failures allows
    ├── StoppedEarly (1) ......... the first files all failed the same way: the transform is broken
    ├── FilesFailed (1) .......... mountproc try: some of the files tried failed
    ├── ClusterError (1) ......... the Dask cluster could not be started or reached
    ├── VerificationFailed (1) ... a published tar is truncated, altered, missing or unlisted
    └── RunAbortedError (1) ...... the run's environment failed mid-run; a rerun can go on
        ├── SourceLostError ...... the source mount stopped answering
        ├── WorkersLostError ..... every Dask worker left the cluster and none came back
        └── DiskFullError ........ scratch or outputs ran out of space

Interrupts stay ``KeyboardInterrupt``s: ``Terminated`` (SIGTERM) and ``RunInterrupted`` (a run
that published what was complete, with its report).

Per-file problems are never exceptions across module boundaries: they are records with a
status and a reason (see ``mountproc._records``).
"""

from __future__ import annotations

from typing import Any


class MountprocError(Exception):
    """Base class of every error mountproc reports to a user."""

    exit_code: int = 1
    report: Any = None  # a run that stopped with this error: its RunReport (what was published)


class UsageError(MountprocError):
    """A mistake the user fixes before running again (exit code 2)."""

    exit_code = 2


class SettingsError(UsageError):
    """A setting has an invalid value."""


class JobFileError(UsageError):
    """The job file cannot be loaded, or it declares an invalid job."""


class JobSetupError(JobFileError):
    """The job's per-worker setup raised: no file can be processed, so the run stops."""


class MountError(UsageError):
    """A mount or directory failed the preflight."""


class WorkerMountError(MountError):
    """A worker sees the source differently (missing, read-write, another export)."""


class OutputsNotEmptyError(UsageError):
    """The outputs directory already holds results of this job."""


class RunLockedError(UsageError):
    """Another run of the same job into the same outputs is running."""


class FailureBudgetExceeded(MountprocError):
    """More files failed than the failure budget allows (exit code 1); ``report`` is the run's
    ``RunReport`` (what was complete is published for inspection)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class StoppedEarly(MountprocError):
    """The run's first files all failed the same way: it stopped rather than fail them all
    (exit code 1; ``--keep-going`` processes everything anyway)."""


class FilesFailed(MountprocError):
    """Some of the files ``mountproc try`` ran the transform on failed (exit code 1)."""


class ClusterError(MountprocError):
    """The Dask cluster could not be started or reached."""


class VerificationFailed(MountprocError):
    """Some tar in the outputs is truncated, altered, missing or unlisted (exit code 1)."""


class RunAbortedError(MountprocError):
    """The environment failed during the run; what was complete is published."""


class SourceLostError(RunAbortedError):
    """The source mount stopped answering (server gone, stale handle, or blocked)."""


class WorkersLostError(RunAbortedError):
    """Every Dask worker left the cluster and none joined again in time."""


class DiskFullError(RunAbortedError):
    """Scratch or outputs ran out of space."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (how Valohai stops an execution), handled like Ctrl-C."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after publishing what was complete; ``report`` is
    its RunReport."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report
