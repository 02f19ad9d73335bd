"""The source's contract when it is a Valohai input (``--input``): a downloaded input is a
read-only copy in a plain directory, not a mount, so the mount check does not apply; an
on-demand input has no directory at all (its files are downloaded by the workers)."""

from __future__ import annotations

import logging

from mountproc._errors import MountError
from mountproc._mounts.source import MountReport, check_source
from mountproc._mounts.table import show
from mountproc._resolve import ResolvedRun
from mountproc._valohai.inputs import ValohaiInput

log = logging.getLogger(__name__)

ON_DEMAND_FSTYPE = "valohai-on-demand"


def check_input(run: ResolvedRun, found: ValohaiInput) -> MountReport:
    """The report of a Valohai input as the source; raise ``MountError`` when it is missing or
    empty."""
    if found.on_demand:
        return _on_demand(run, found)
    if not run.source.is_dir():
        raise MountError(
            f"Valohai input {found.name}: {show(run.source)} does not exist: the input was not "
            "downloaded (is it declared `download: on-demand`, or optional and left empty?)"
        )
    report, _ = check_source(
        run.source,
        declared_readonly=False,
        strict=False,
        allow_writable=True,
        allow_empty=run.settings.allow_empty,
        timeout=run.settings.mount_timeout,
    )
    log.info(
        "source: Valohai input %s at %s, a downloaded, read-only copy (not a mount: no mount "
        "check)",
        found.name,
        show(run.source),
    )
    return report


def _on_demand(run: ResolvedRun, found: ValohaiInput) -> MountReport:
    """An on-demand input: its files as ``inputs.json`` lists them, none on disk."""
    if not found.files and not run.settings.allow_empty:
        raise MountError(
            f"Valohai input {found.name} has no files (inputs.json lists none): check the "
            "input's URI, or pass --allow-empty"
        )
    log.info(
        "source: Valohai input %s, on demand: %d files listed in inputs.json, downloaded by the "
        "workers",
        found.name,
        len(found.files),
    )
    where = str(run.source)
    return MountReport(
        path=run.source,
        realpath=where,
        mount_point=where,
        fstype=ON_DEMAND_FSTYPE,
        source=f"valohai input {found.name}",
        kind="network",
        options=(),
        readonly=True,
        is_mount_point=False,
        on_mount=True,
    )
