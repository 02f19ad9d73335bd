"""The ``mountproc`` command line: one module per command, a thin layer over the package; the
only place that turns errors into exit codes (``guard``)."""

from __future__ import annotations

from mountproc._cli import (
    check,
    plan,
    report,
    run,
    sample_data,
    try_files,
    verify,
    worker,
    yaml_step,
)  # fmt: skip
from mountproc._cli.main import main

__all__ = [
    "check", "main", "plan", "report", "run", "sample_data", "try_files", "verify", "worker",
    "yaml_step",
]  # fmt: skip
