"""Run settings, validated once at the edge: CLI > ``MOUNTPROC_*`` env > Valohai parameters >
job defaults (pydantic-settings does the layering)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    ByteSize,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mountproc._errors import SettingsError
from mountproc._job import Job, check_dataset_uri
from mountproc._valohai import environment as _valohai

log = logging.getLogger(__name__)

PARAM_ENV_PREFIX = "MOUNTPROC_PARAM_"


def _env(name: str, *extra: str) -> AliasChoices:
    return AliasChoices(name, f"MOUNTPROC_{name.upper()}", *extra)


@dataclass(frozen=True)
class FailureBudget:
    """How many failed files a run may have: an absolute count, or a fraction of the files."""

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> FailureBudget:
        """Parse ``"10"``, ``"0.05"`` or ``"5%"``."""
        t = text.strip()
        if re.fullmatch(r"\d+", t):
            return cls(count=int(t))
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(%?)", t)
        if not m:
            raise ValueError("expected a count (10), a fraction (0.05) or a percentage (5%)")
        value = float(m.group(1)) / (100 if m.group(2) else 1)
        if not 0 <= value <= 1:
            raise ValueError("a fraction must be between 0 and 1 (or 0% and 100%)")
        return cls(fraction=value)

    def allows(self, failed: int, total: int) -> bool:
        """True when ``failed`` files out of ``total`` are within the budget."""
        if self.count is not None:
            return failed <= self.count
        # exact decimal arithmetic: 0.29 * 100 is 28.999999999999996 in floating point
        return failed <= Fraction(repr(self.fraction or 0.0)) * total

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{(self.fraction or 0) * 100:g}%"


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


def setting_extra(name: str) -> dict[str, Any]:
    """What ``_setting`` declared of a field besides pydantic's own (metavar, flag, valohai)."""
    extra = RunSettings.model_fields[name].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


class RunSettings(BaseSettings):
    """Every setting of ``mountproc run``, declared once (see ``_setting``)."""

    model_config = SettingsConfigDict(
        env_prefix="MOUNTPROC_", populate_by_name=True, extra="forbid", frozen=True
    )

    source: Path | None = _setting(None, "Source directory (default: the job's).", metavar="DIR")
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
        None, "Workers of the embedded local cluster (default: CPUs).", ge=1
    )
    threads_per_worker: int = _setting(1, "Threads per local worker (default 1).", ge=1)
    scheduler: str | None = _setting(
        None,
        "Address of an existing Dask scheduler (also DASK_SCHEDULER_ADDRESS).",
        alias=_env("scheduler", "DASK_SCHEDULER_ADDRESS"),
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
        "existing or distributed cluster).",
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
        "Seconds a mount may take to answer a probe before it counts as hung (default 30).",
        gt=0,
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
    fresh: bool = _setting(False, "Replace earlier results of this job in outputs.")

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


def check_tls(
    ca_file: Path | None, cert: Path | None, key: Path | None, scheduler: str | None
) -> bool:
    """Whether TLS files are given; raise ValueError when they come without each other, without
    a ``tls://`` scheduler that needs them, or with a scheduler that would not use them."""
    files = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    given = [flag for flag, path in files.items() if path is not None]
    if given and len(given) < len(files):
        missing = ", ".join(flag for flag in files if flag not in given)
        raise ValueError(f"TLS needs --tls-ca-file, --tls-cert and --tls-key: {missing} missing")
    if scheduler and scheduler.startswith("tls://") and not given:
        raise ValueError(
            f"the scheduler {scheduler} uses TLS: pass --tls-ca-file, --tls-cert and --tls-key "
            "(the CA that signed the scheduler's certificate, and this client's certificate "
            "and key)"
        )
    if given and scheduler and not scheduler.startswith("tls://"):
        raise ValueError(
            f"TLS files were given but the scheduler address {scheduler} is not tls://: use "
            "tls://HOST:PORT, or drop the --tls-* options"
        )
    for flag, path in files.items():
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    return bool(given)


class _DictSource(PydanticBaseSettingsSource):
    """A fixed mapping as a settings source (Valohai parameters, job defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class _EnvSource(EnvSettingsSource):
    """The environment, without the bare field names (``OUTPUTS``, ``SCHEDULER``) that the
    first alias choice would otherwise read, before ``MOUNTPROC_*`` at that."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        bare = field_name if self.case_sensitive else field_name.lower()
        found: tuple[Any, str, bool] = (None, field_name, False)
        for key, env_name, is_complex in self._extract_field_info(field, field_name):
            if key == field_name and env_name == bare:
                continue
            found = (self.env_vars.get(env_name), key, is_complex)
            if found[0] is not None:
                break
        return found


@dataclass(frozen=True)
class ResolvedRun:
    """Settings with every default resolved, plus the validated job parameters."""

    settings: RunSettings
    source: Path
    outputs: Path
    scratch: Path
    strict_mounts: bool
    on_valohai: bool
    params: Any
    distributed: _valohai.DistributedTask | None = None


def flag_name(field: str) -> str:
    """The CLI flag of a settings field (``test_size`` -> ``--test-size``)."""
    return "--" + field.replace("_", "-")


def resolve(
    job: Job, cli: Mapping[str, Any], cli_params: Mapping[str, Any], environ: Mapping[str, str]
) -> ResolvedRun:
    """Validate every setting and job parameter; raise ``SettingsError`` naming the bad one."""
    vh_settings, vh_params = _split_valohai(job, _valohai.read_parameters(environ))
    settings = _build(cli, vh_settings, _job_defaults(job))
    params = job.parse_params(_layer_params(job, vh_params, cli_params, environ))
    source = settings.source or (Path(job.source) if job.source else None)
    source = source.absolute() if source is not None else None  # workers run elsewhere
    if source is None:
        raise SettingsError(f"job {job.name!r} declares no source: pass --source DIR")
    outputs = (settings.outputs or _valohai.default_outputs(environ)).absolute()
    scratch = (settings.scratch or _valohai.default_scratch(outputs)).absolute()
    on_vh = _valohai.on_valohai(environ)
    strict = on_vh if settings.strict_mounts is None else settings.strict_mounts
    distributed = _valohai.read_distributed(environ)
    if distributed is not None and settings.scheduler:
        raise SettingsError(
            "this is a Valohai distributed task, whose primary member starts the scheduler "
            f"itself: drop --scheduler {settings.scheduler}"
        )
    if distributed is not None and settings.tls_cert is None:
        log.warning(
            "the members of this distributed task talk in clear text, and anything on their "
            "network can reach the scheduler: set MOUNTPROC_TLS_CA_FILE, MOUNTPROC_TLS_CERT "
            "and MOUNTPROC_TLS_KEY on every member to encrypt and authenticate them"
        )
    return ResolvedRun(settings, source, outputs, scratch, strict, on_vh, params, distributed)


def _build(
    cli: Mapping[str, Any], vh: Mapping[str, Any], defaults: Mapping[str, Any]
) -> RunSettings:
    class _Layered(RunSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                _EnvSource(settings_cls),
                _DictSource(settings_cls, vh),
                _DictSource(settings_cls, defaults),
            )

    try:
        return _Layered(**{k: v for k, v in cli.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across settings: its message names them
            raise SettingsError(f"invalid settings: {_clean(err['msg'])}") from None
        field = str(err["loc"][0])
        raise SettingsError(f"invalid setting {flag_name(field)}: {_clean(err['msg'])}") from None


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _job_defaults(job: Job) -> dict[str, Any]:
    unknown = sorted(set(job.settings) - set(RunSettings.model_fields))
    if unknown:
        raise SettingsError(
            f"job {job.name!r}: unknown setting {unknown[0]!r} in Job(settings=...)"
        )
    defaults = dict(job.settings)
    if job.dataset:
        defaults.setdefault("dataset", job.dataset)
    return defaults


def _split_valohai(job: Job, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    settings, params = {}, {}
    for key, value in values.items():
        if key in job.params.model_fields:
            params[key] = value
        elif key in RunSettings.model_fields:
            settings[key] = value
        else:
            log.warning(
                "Valohai parameter %r is neither a mountproc setting nor a job parameter; ignored",
                key,
            )
    return settings, params


def _layer_params(
    job: Job, vh: Mapping[str, Any], cli: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    from_env = {
        key[len(PARAM_ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.upper().startswith(PARAM_ENV_PREFIX)
    }
    return {**vh, **from_env, **cli}
