"""The Python entry point: ``mountproc.run``, which the ``mountproc run`` command calls too."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mountproc._cluster import warm
from mountproc._errors import ClusterError, FailureBudgetExceeded
from mountproc._job import Job
from mountproc._jobfile import job_ref
from mountproc._records import RunReport
from mountproc._resolve import ResolvedRun, resolve
from mountproc._settings import CLUSTER_SETTINGS

if TYPE_CHECKING:
    from mountproc._cluster.client import Client

log = logging.getLogger(__name__)


def run(
    job: Job | str | os.PathLike[str],
    /,
    *,
    client: Client | None = None,
    params: Mapping[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> RunReport:
    """Run ``job`` (a job file's path, or a ``Job``) end to end, as ``mountproc run`` does.

    ``settings`` are the settings of ``mountproc run`` by field name (``source="./photos"``,
    ``test_mode=True``, ``workers=4``); ``params`` the job's parameters. Both are layered as on
    the command line: these, then ``MOUNTPROC_*`` and ``MOUNTPROC_PARAM_*`` from the
    environment, Valohai's ``parameters.json``, the job's own defaults. ``client`` is an
    existing ``distributed.Client`` (from any cluster manager: dask-jobqueue, dask-gateway,
    dask-kubernetes, coiled); it is checked and used, and left open. ``progress`` is called
    with the counts after every shard.

    Returns the ``RunReport``. Raises ``FailureBudgetExceeded`` (with ``.report``) when more
    files failed than ``max_failures`` allows, another ``MountprocError`` for a mistake or a
    failed environment, ``KeyboardInterrupt`` when interrupted (what was complete is
    published either way)."""
    ref, loaded = job_ref(job if isinstance(job, Job) else Path(job))
    resolved = resolve(loaded, settings, dict(params or {}), os.environ)
    task = resolved.distributed
    if task is not None and not task.is_primary:
        return _serve_as_member(loaded, resolved)
    s = resolved.settings
    if client is None and not any(getattr(s, name) for name in CLUSTER_SETTINGS):
        warm.warm_up()  # the embedded cluster's workers import while this process does
    from mountproc._runner import Run  # Dask is imported only for a run

    try:
        report = Run(loaded, ref, resolved, client, progress).execute()
    except FailureBudgetExceeded as exc:  # stopped early: failures passed the budget
        raise _over_budget(exc.report, resolved, "stopped early") from None
    if not report.within_budget:
        raise _over_budget(report, resolved, "")
    return report


def _over_budget(report: RunReport, resolved: ResolvedRun, how: str) -> FailureBudgetExceeded:
    """The error of a run over its failure budget: counts, the commonest failure, where the
    details are, and what it means for the dataset version."""
    s = report.summary
    test = resolved.settings.test_mode
    verdict = "a full run would fail the same way" if test else "no dataset version registered"
    return FailureBudgetExceeded(
        f"{s['files_failed']} of {s['files_selected']} files failed, more than "
        f"--max-failures={resolved.settings.max_failures}{f' ({how})' if how else ''}: "
        f"{verdict}; {_commonest(s)}details: mountproc report {report.outputs}",
        report,
    )


def _commonest(summary: dict[str, Any]) -> str:
    groups = summary.get("failures") or []
    if not groups:
        return ""
    top = groups[0]
    return f"the commonest: {top['error']} ({top['files']} files, e.g. {top['example']}); "


def _serve_as_member(job: Job, resolved: ResolvedRun) -> RunReport:
    """On a member of a Valohai distributed task other than the primary: check the source, then
    be a worker of the primary's cluster until it closes. Nothing is written to outputs."""
    from mountproc._cluster.client import worker_environ
    from mountproc._cluster.placement import member_command
    from mountproc._mounts.preflight import preflight_source

    preflight_source(resolved, job.readonly)
    cmd = member_command(resolved)
    log.info("running %s", " ".join(cmd))
    code = subprocess.run(cmd, env={**worker_environ(), **os.environ}, check=False).returncode
    if code != 0:
        raise ClusterError(f"this member's Dask worker exited with code {code}")
    member = {
        "job": job.name,
        "member": resolved.distributed.member_id if resolved.distributed else None,
    }
    return RunReport({**member, "role": "member"}, True, resolved.outputs)
