"""The ``mountproc`` command line: one module per command, a thin layer over the package; the
only place that turns errors into exit codes (``guard``)."""

from __future__ import annotations

from mountproc._cli import check, plan, run, sample_data, verify, worker, yaml_step
from mountproc._cli.main import main

__all__ = ["check", "main", "plan", "run", "sample_data", "verify", "worker", "yaml_step"]
