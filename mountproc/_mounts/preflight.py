"""The checks a run passes before anything is started or written: the source's mount, then
scratch and outputs (writable, outside the source, with room to spare)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mountproc._errors import MountError
from mountproc._mounts.dirs import DirReport, check_output_dir
from mountproc._mounts.inputs import check_input
from mountproc._mounts.source import MountReport, check_source
from mountproc._mounts.table import show
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preflight:
    """What the preflight found: the source's mount, and scratch and outputs."""

    mount: MountReport
    dirs: tuple[DirReport, ...]

    def as_dict(self) -> dict[str, Any]:
        """The facts for the run summary."""
        return {"mount": self.mount.as_dict(), **{d.role: d.as_dict() for d in self.dirs}}


def preflight_source(run: ResolvedRun, declared_readonly: bool) -> MountReport:
    """Check the source mount; warnings (a plain directory off Valohai) are logged."""
    s = run.settings
    if run.input is not None:  # a Valohai input: a downloaded copy, or files on demand
        return check_input(run, run.input)
    report, warnings = check_source(
        run.source,
        declared_readonly=declared_readonly,
        strict=run.strict_mounts,
        allow_writable=s.allow_writable,
        allow_empty=s.allow_empty,
        timeout=s.mount_timeout,
    )
    for w in warnings:
        log.warning("%s", w)
    return report


def preflight(run: ResolvedRun, declared_readonly: bool) -> Preflight:
    """Check the source mount, scratch and outputs."""
    s = run.settings
    report = preflight_source(run, declared_readonly)
    dirs = []
    for role, path in (("outputs", run.outputs), ("scratch", run.scratch)):
        if _is_within(path, run.source):
            raise MountError(
                f"{role} directory {show(path)} is inside the source {show(run.source)}: it "
                f"would be crawled as input; choose --{role} outside the source"
            )
        dirs.append(check_output_dir(path, role, int(s.min_free_space), s.mount_timeout))
    return Preflight(report, tuple(dirs))


def _is_within(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
