"""Dask workers as batch jobs (dask-jobqueue: Slurm, PBS, SGE, LSF, HTCondor, OAR, Moab), built
from the Dask config's ``jobqueue.<kind>`` section; a worker job that is lost is replaced, and
every job is cancelled when the run ends, however it ends."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed import Client

from mountproc._cluster.checks import check_versions
from mountproc._cluster.client import CLOSE_TIMEOUT_S, NO_PROFILER, quiet, worker_environ
from mountproc._cluster.stream import Poller
from mountproc._errors import ClusterError, SettingsError

log = logging.getLogger(__name__)

KINDS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "oar": "OARCluster",
    "moab": "MoabCluster",
}
"""``--cluster`` values and the dask-jobqueue class each starts."""


@dataclass(frozen=True)
class BatchOptions:
    """A cluster of batch jobs: its kind, how many jobs (or adaptive bounds), their memory."""

    kind: str
    jobs: int = 1
    adapt: tuple[int, int] | None = None
    memory: int | None = None  # bytes per job (instead of jobqueue.<kind>.memory)
    worker_wait_s: float = 60.0


def cluster_class(kind: str) -> Any:
    """dask-jobqueue's cluster class for ``kind``; one line when dask-jobqueue is missing."""
    try:
        import dask_jobqueue
    except ImportError:
        raise SettingsError(
            f'--cluster {kind} needs dask-jobqueue: pip install "mountproc[hpc]"'
        ) from None
    return getattr(dask_jobqueue, KINDS[kind])


def _make(opts: BatchOptions) -> Any:
    """The cluster (its scheduler runs in this process); no job is submitted yet."""
    cls, section = cluster_class(opts.kind), f"jobqueue.{opts.kind}"
    prologue = list(dask.config.get(f"{section}.job-script-prologue", None) or [])
    # the worker jobs do not read this process's config, only the environment: what is unset
    exports = [f'export {k}="${{{k}:-{v}}}"' for k, v in worker_environ().items()]
    kwargs: dict[str, Any] = {"job_script_prologue": [*prologue, *exports]}
    if opts.memory:
        kwargs["memory"] = opts.memory
    try:
        return cls(**kwargs)
    except ValueError as exc:
        if "cores and memory" in str(exc):
            raise SettingsError(
                f"--cluster {opts.kind}: set cores and memory per worker job in the Dask "
                f"config's {section} section (e.g. ~/.config/dask/jobqueue.yaml; memory also "
                "by --worker-memory)"
            ) from None
        raise SettingsError(f"--cluster {opts.kind}: {section} in the Dask config: {exc}") from None
    except Exception as exc:  # a bad interface, a port in use
        raise ClusterError(f"cannot start the {opts.kind} cluster's scheduler: {exc}") from exc


@contextmanager
def batch_cluster(opts: BatchOptions) -> Iterator[Client]:
    """Yield a client of a cluster whose workers are batch jobs; cancel the jobs at the end."""
    with dask.config.set(NO_PROFILER), quiet():
        cluster = _make(opts)
        try:
            with Client(cluster) as client:
                _submit(cluster, opts)
                with Replacer(cluster):
                    _wait_for_a_worker(client, opts)
                    check_versions(client)
                    yield client
        finally:
            _cancel(cluster, opts.kind)


def _submit(cluster: Any, opts: BatchOptions) -> None:
    """Submit the first jobs now, so that a refused submission (a wrong queue or account) is
    an error here; then keep their number, or adapt it."""
    first = max(1, opts.adapt[0]) if opts.adapt else opts.jobs
    log.debug("%s worker job script:\n%s", opts.kind, cluster.job_script())
    cluster.scale(jobs=first)
    try:
        # what scale() schedules on the cluster's loop, awaited: it runs the submit command
        cluster.sync(cluster._correct_state)
    except Exception as exc:
        raise ClusterError(f"cannot submit {opts.kind} worker jobs: {_one_line(exc)}") from None
    if opts.adapt:
        # a run has work until it ends, so a minimum of 0 would only stop it from starting
        low, high = max(1, opts.adapt[0]), opts.adapt[1]
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        log.info("submitted %d %s worker job(s); adapting between %d and %d", first,
                 opts.kind, low, high)  # fmt: skip
    else:
        log.info("submitted %d %s worker job(s)", first, opts.kind)
    if cluster.dashboard_link:
        log.info("Dask dashboard: %s", cluster.dashboard_link)


def _one_line(exc: BaseException) -> str:
    """The lines of a submit command's error (its command, stdout and stderr) joined."""
    return " ".join(" ".join(str(exc).split("\n")).split())


def _wait_for_a_worker(client: Client, opts: BatchOptions) -> None:
    """Wait for the first worker job to start and join (the others join as they start)."""
    try:
        client.wait_for_workers(1, timeout=opts.worker_wait_s)
    except TimeoutError:
        raise ClusterError(
            f"no {opts.kind} worker job started and joined within {opts.worker_wait_s:g} s: "
            "see the queue (squeue, qstat, bjobs...) and the jobs' output; wait longer with "
            f"--worker-wait, or check jobqueue.{opts.kind} in the Dask config (queue, account, "
            "interface)"
        ) from None


def _cancel(cluster: Any, kind: str) -> None:
    """Close the cluster: every worker job is cancelled (scancel, qdel...), its scheduler
    stopped."""
    jobs = [getattr(job, "job_id", None) for job in list(cluster.workers.values())]
    try:
        cluster.close(timeout=CLOSE_TIMEOUT_S)
    except Exception as exc:  # the cancel command failed or hung: say which jobs may remain
        log.warning("could not cancel every %s worker job (%s): check the queue for %s",
                    kind, exc, ", ".join(str(j) for j in jobs if j))  # fmt: skip
        return
    log.info("cancelled %d %s worker job(s)", len([j for j in jobs if j]), kind)


class Replacer(Poller):
    """Replaces a worker job whose workers all left (cancelled, out of walltime, a failed node)
    with a new job. distributed drops a lost worker's job only when the job runs one worker
    process, and then does not submit another until the cluster is scaled again."""

    POLL_S = 2.0

    def __init__(self, cluster: Any) -> None:
        super().__init__("mountproc-jobs")
        self._cluster = cluster
        # longer than distributed's own wait, which would otherwise cancel the replacement
        lost = dask.config.get("distributed.deploy.lost-worker-timeout")
        self._grace_s = float(parse_timedelta(lost)) + 2 * self.POLL_S
        self._seen: dict[str, float] = {}  # job name -> when one of its workers was last seen
        self._ids: dict[str, str] = {}  # job name -> the batch system's job id

    def tick(self) -> bool:
        try:
            self._cluster.sync(self._replace_lost)
        except Exception as exc:  # the cluster is closing, or a submission failed
            log.debug("could not replace lost worker jobs: %s", exc)
        return False

    async def _replace_lost(self) -> None:
        """On the cluster's event loop: forget jobs lost for longer than the grace, submit
        every job the cluster should have but has not."""
        c, now = self._cluster, time.monotonic()
        names = {str(w.get("name")) for w in c.scheduler_info.get("workers", {}).values()}
        for job in list(c.workers):
            self._ids[job] = str(getattr(c.workers[job], "job_id", None) or "?")
            if any(n == job or n.rsplit("-", 1)[0] == job for n in names):
                self._seen[job] = now
            elif now - self._seen.get(job, now) > self._grace_s:
                with contextlib.suppress(Exception):
                    await c.workers.pop(job).close()  # the cancel command, for a job hanging on
        missing = set(c.worker_spec) - set(c.workers)
        # every job submitted and gone, also one whose worker left between two polls
        for job in sorted(missing & set(self._ids)):
            self._seen.pop(job, None)
            log.warning(
                "worker job %s (%s) left the cluster (cancelled, out of walltime, or "
                "its node failed): submitting a replacement",
                self._ids.pop(job),
                job,
            )
        if missing:
            await c._correct_state()
