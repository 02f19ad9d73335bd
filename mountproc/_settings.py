"""Every setting of a run, declared once (``RunSettings``): default, bounds, description, CLI
metavar, and whether it is a Valohai parameter; the rules between them (the values themselves:
``_setting_values``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mountproc._errors import SettingsError
from mountproc._job import check_dataset_uri
from mountproc._setting_values import FailureBudget, check_tls, parse_adapt, parse_resources

ClusterKind = Literal["slurm", "pbs", "sge", "lsf", "htcondor", "oar", "moab"]
"""The batch schedulers dask-jobqueue starts workers on."""


def _env(name: str, *extra: str) -> AliasChoices:
    return AliasChoices(name, f"MOUNTPROC_{name.upper()}", *extra)


def _setting(
    default: Any,
    description: str,
    *,
    metavar: str | None = None,
    flag: str | None = None,
    alias: AliasChoices | None = None,
    valohai: bool = False,
    **bounds: Any,
) -> Any:
    """One setting, declared once: its default, bounds and description make the CLI option
    (``metavar``, and ``flag`` when it differs from the field's name), ``check``'s report, the
    README's table (checked by a test) and, with ``valohai``, a parameter of the generated
    Valohai step."""
    extra = {"metavar": metavar, "flag": flag, "valohai": valohai}
    return Field(
        default,
        description=description,
        validation_alias=alias,
        json_schema_extra={k: v for k, v in extra.items() if v},
        **bounds,
    )


def env_names(name: str) -> list[str]:
    """The environment variables a setting is read from: ``MOUNTPROC_NAME`` and the other
    names its alias gives (``VH_OUTPUTS_DIR``, ``DASK_SCHEDULER_ADDRESS``), never the bare
    field name: ``OUTPUTS`` or ``SCHEDULER`` in an environment may mean anything."""
    alias = RunSettings.model_fields[name].validation_alias
    if not isinstance(alias, AliasChoices):
        return [f"MOUNTPROC_{name.upper()}"]
    return [c for c in alias.choices if isinstance(c, str) and c != name]


def setting_extra(name: str) -> dict[str, Any]:
    """What ``_setting`` declared of a field besides pydantic's own (metavar, flag, valohai)."""
    extra = RunSettings.model_fields[name].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


class RunSettings(BaseModel):
    """Every setting of ``mountproc run``, declared once (see ``_setting``). Read from the
    command line, the environment, Valohai and the job by ``_resolve``'s pydantic-settings
    subclass: this declaration needs pydantic alone, which is all ``run --help`` imports."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True, defer_build=True)

    source: Path | None = _setting(None, "Source directory (default: the job's).", metavar="DIR")
    input: str | None = _setting(
        None,
        "Valohai input to process instead of --source: its downloaded copy, or with "
        "`download: on-demand` its files downloaded by the workers.",
        metavar="NAME",
    )
    outputs: Path | None = _setting(
        None,
        "Outputs directory (default: $VH_OUTPUTS_DIR; /valohai/outputs on Valohai; else "
        "./outputs).",
        metavar="DIR",
        alias=_env("outputs", "VH_OUTPUTS_DIR"),
    )
    scratch: Path | None = _setting(None, "Working directory for shards.", metavar="DIR")
    test_mode: bool = _setting(
        False,
        "Process a small deterministic subset (also TEST_MODE=true).",
        alias=_env("test_mode", "TEST_MODE"),
        valohai=True,
    )
    test_size: int = _setting(
        100, "Files in the test-mode subset (default 100).", ge=1, valohai=True
    )
    workers: int | None = _setting(
        None,
        "Workers of the embedded local cluster (default: CPUs), or worker jobs with --cluster "
        "(default 1).",
        ge=1,
    )
    threads_per_worker: int = _setting(1, "Threads per local worker (default 1).", ge=1)
    scheduler: str | None = _setting(
        None,
        "Address of an existing Dask scheduler (also DASK_SCHEDULER_ADDRESS).",
        alias=_env("scheduler", "DASK_SCHEDULER_ADDRESS"),
    )
    scheduler_file: Path | None = _setting(
        None,
        "Scheduler file of an existing Dask cluster, as dask scheduler --scheduler-file or "
        "dask-mpi writes it.",
        metavar="FILE",
    )
    resources: str | None = _setting(
        None,
        "Dask resources each shard needs, e.g. GPU=1 (it runs only on workers that declare "
        "them; the embedded cluster's workers declare them).",
        metavar="NAME=N,...",
    )
    cluster: ClusterKind | None = _setting(
        None,
        "Start the Dask workers as batch jobs of this scheduler (dask-jobqueue, from the "
        "jobqueue.KIND section of the Dask config); cancelled when the run ends.",
    )
    adapt: str | None = _setting(
        None,
        "With --cluster: adapt between MIN and MAX worker jobs to the work left (instead of "
        "--workers).",
        metavar="MIN:MAX",
    )
    worker_memory: ByteSize | None = _setting(
        None,
        "Memory limit of each embedded worker, or of each --cluster worker job (instead of "
        "jobqueue.KIND.memory), e.g. 4GiB.",
        metavar="LIMIT",
        gt=0,
    )
    tls_ca_file: Path | None = _setting(
        None, "CA certificate of a tls:// scheduler.", metavar="FILE"
    )
    tls_cert: Path | None = _setting(None, "This client's TLS certificate (PEM).", metavar="FILE")
    tls_key: Path | None = _setting(None, "This client's TLS private key (PEM).", metavar="FILE")
    worker_wait: float = _setting(
        60.0, "Seconds to wait for workers to join an existing scheduler (default 60).", gt=0
    )
    scheduler_port: int = _setting(
        8786,
        "Port of the scheduler a Valohai distributed task's primary starts (8786).",
        ge=1,
        le=65535,
    )
    crawl: Literal["auto", "driver", "cluster"] = _setting(
        "auto",
        "Where the tree is listed: here, or on the cluster's workers (auto: on the workers of an "
        "existing, batch-job or distributed cluster).",
    )
    crawl_threads: int | None = _setting(
        None,
        "Threads that list the tree here (default: 16 on a network file system, 1 on a local "
        "disk).",
        ge=1,
    )
    dataset: str | None = _setting(
        None, "Valohai dataset version: dataset://NAME/VERSION.", valohai=True
    )
    dataset_from: str | None = _setting(
        None, "Base the dataset version on this one (dataset://NAME/VERSION)."
    )
    dataset_start_fresh: bool = _setting(False, "Start the dataset version empty.")
    dataset_aliases: tuple[str, ...] = _setting(
        (), "Targeting alias for the dataset version (repeatable).", flag="dataset-alias"
    )
    shard_max_files: int = _setting(
        1000, "Files per shard at most (default 1000).", ge=1, valohai=True
    )
    shard_max_bytes: ByteSize = _setting(
        ByteSize(1 << 30),
        "Source bytes per shard at most, e.g. 512MiB (default 1GiB).",
        gt=0,
        valohai=True,
    )
    max_failures: str = _setting(
        "1%", "Failure budget: a count (10) or a fraction (0.01, 1%).", valohai=True
    )
    strict_mounts: bool | None = _setting(
        None, "Require the source to be a mount (default: on Valohai only)."
    )
    allow_writable: bool = _setting(False, "Accept a source mounted read-write.")
    allow_empty: bool = _setting(False, "Accept a source with no files (default: an error).")
    mount_timeout: float = _setting(
        30.0,
        "Seconds a mount may take to answer a probe before it counts as hung (default 30, at "
        "least 1).",
        ge=1,  # an inclusive bound: Valohai's parameter min can carry it, an exclusive one not
        valohai=True,
    )
    file_timeout: float = _setting(
        300.0,
        "Seconds one file's transform may take; the file then fails (default 300, 0: no limit).",
        ge=0,
        valohai=True,
    )
    min_free_space: ByteSize = _setting(
        ByteSize(1 << 30),
        "Free space that scratch and outputs must have at the start, e.g. 20GiB (default 1GiB).",
        ge=0,
    )
    keep_going: bool = _setting(
        False,
        "Process every file however many fail (default: stop once failures pass "
        "--max-failures, or when the first files all fail the same way).",
    )
    fresh: bool = _setting(False, "Replace earlier results of this job in outputs.")
    since: Path | None = _setting(
        None,
        "Process only what changed since an earlier run of this job: its manifest, or the "
        "outputs directory holding it (an empty directory: none yet, a full run).",
        metavar="PREVIOUS",
    )
    retry_failed: Path | None = _setting(
        None,
        "Process only the files that failed in an earlier run of this job (its manifest or "
        "outputs); with --since, those as well as what changed.",
        metavar="PREVIOUS",
    )
    tags: tuple[str, ...] = _setting(
        (), "Valohai tag on every published file (repeatable).", flag="tag", metavar="TAG"
    )
    alias: str | None = _setting(
        None,
        "Valohai alias for the manifest (e.g. JOB-manifest-latest): datum://ALIAS then names the "
        "newest one, the next increment's --since input.",
        metavar="ALIAS",
        valohai=True,
    )
    compare: Literal["mtime", "sha256"] = _setting(
        "mtime",
        "How --since tells a changed file: by size and mtime, or by content (sha256: reads "
        "every file).",
    )

    @field_validator("dataset", "dataset_from")
    @classmethod
    def _dataset_uri(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return check_dataset_uri(v, "dataset")
        except SettingsError:  # a ValueError, so the message names the flag like the others
            raise ValueError(f"{v!r} is not of the form dataset://<name>/<version>") from None

    @model_validator(mode="after")
    def _dataset_base(self) -> RunSettings:
        if self.dataset_from and self.dataset_start_fresh:
            raise ValueError("--dataset-from and --dataset-start-fresh contradict each other")
        return self

    @field_validator("adapt", "resources")
    @classmethod
    def _parsed(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v:  # parse_adapt or parse_resources: a bad value raises, naming what is wrong
            {"adapt": parse_adapt, "resources": parse_resources}[str(info.field_name)](v)
        return v or None

    @property
    def adapt_bounds(self) -> tuple[int, int] | None:
        """The parsed ``--adapt`` (None: a fixed number of worker jobs)."""
        return parse_adapt(self.adapt) if self.adapt else None

    @model_validator(mode="after")
    def _cluster_rules(self) -> RunSettings:
        check_cluster_rules(self)
        return self

    @model_validator(mode="after")
    def _increment(self) -> RunSettings:
        since = self.since or self.retry_failed
        if since and self.dataset_start_fresh:
            raise ValueError(
                "--dataset-start-fresh contradicts --since and --retry-failed: an increment "
                "holds only what changed, its version the rest of its base version"
            )
        if self.since and self.retry_failed and self.since != self.retry_failed:
            raise ValueError("--since and --retry-failed must name the same earlier run")
        return self

    @model_validator(mode="after")
    def _input(self) -> RunSettings:
        if self.input is not None and self.source is not None:
            raise ValueError("--input and --source contradict each other: give one")
        return self

    @model_validator(mode="after")
    def _tls(self) -> RunSettings:
        check_tls(self.tls_ca_file, self.tls_cert, self.tls_key, self.scheduler)
        return self

    @field_validator("max_failures", mode="before")
    @classmethod
    def _budget_text(cls, v: Any) -> Any:
        # parameters.json and Job(settings=...) may hold a number: 10 or 0.05
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("max_failures")
    @classmethod
    def _budget(cls, v: str) -> str:
        FailureBudget.parse(v)
        return v

    @property
    def resource_needs(self) -> dict[str, float]:
        """The parsed ``--resources`` (empty: none)."""
        return parse_resources(self.resources) if self.resources else {}

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str | None) -> str | None:
        if v and not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://", v):
            raise ValueError("expected an address like tcp://host:8786 or tls://host:8786")
        return v or None

    @property
    def budget(self) -> FailureBudget:
        """The parsed failure budget."""
        return FailureBudget.parse(self.max_failures)


CLUSTER_SETTINGS = ("scheduler", "scheduler_file", "cluster")
"""The settings that give a run a cluster of its own instead of the embedded one."""


def check_cluster_rules(s: RunSettings) -> None:
    """Raise ValueError when the cluster settings contradict each other."""
    existing = "--scheduler" if s.scheduler else "--scheduler-file" if s.scheduler_file else None
    if s.cluster and existing:
        raise ValueError(
            f"--cluster {s.cluster} starts a cluster, {existing} names an existing one: give one"
        )
    if s.adapt and not s.cluster:
        raise ValueError("--adapt adapts the worker jobs of --cluster: add --cluster KIND")
    if s.adapt and s.workers is not None:
        raise ValueError("--workers N and --adapt MIN:MAX contradict each other: give one")
    if s.worker_memory is not None and existing:
        raise ValueError(
            f"--worker-memory limits the workers mountproc starts, not those of {existing}: "
            "start them with dask worker --memory-limit, or drop --worker-memory"
        )
