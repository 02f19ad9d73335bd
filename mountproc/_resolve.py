"""Settings and job parameters resolved once, at the edge: the command line (or ``mountproc.run``'s
arguments) over ``MOUNTPROC_*`` in the environment over Valohai's ``parameters.json`` over the
job's defaults (pydantic-settings does the layering); library code gets a ``ResolvedRun``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mountproc._errors import SettingsError
from mountproc._job import Job
from mountproc._setting_values import check_tls
from mountproc._settings import RunSettings
from mountproc._valohai import environment as _valohai
from mountproc._valohai.inputs import ValohaiInput, find_input

log = logging.getLogger(__name__)

PARAM_ENV_PREFIX = "MOUNTPROC_PARAM_"


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
    first alias choice would otherwise read, before ``MOUNTPROC_*`` at that: the variables
    ``_settings.env_names`` lists, in the alias's order."""

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
    input: ValohaiInput | None = None  # --input: a Valohai input is the source

    @property
    def on_demand(self) -> ValohaiInput | None:
        """The on-demand Valohai input whose files the workers download, if that is the source."""
        return self.input if self.input is not None and self.input.on_demand else None

    @property
    def watched(self) -> Path | None:
        """The source directory to probe while the run goes on (none for an on-demand input)."""
        return None if self.on_demand is not None else self.source


def flag_name(field: str) -> str:
    """The CLI flag of a settings field (``test_size`` -> ``--test-size``)."""
    return "--" + field.replace("_", "-")


def resolve(
    job: Job, cli: Mapping[str, Any], cli_params: Mapping[str, Any], environ: Mapping[str, str]
) -> ResolvedRun:
    """Validate every setting and job parameter; raise ``SettingsError`` naming the bad one."""
    vh_settings, vh_params = _split_valohai(job, _valohai.read_parameters(environ))
    settings = _scheduler_from_file(_build(cli, vh_settings, _job_defaults(job)))
    params = job.parse_params(_layer_params(job, vh_params, cli_params, environ))
    found = find_input(settings.input, environ) if settings.input else None
    source = found.path if found else settings.source or (Path(job.source) if job.source else None)
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
    if distributed is not None and settings.cluster:
        raise SettingsError(
            "this is a Valohai distributed task, whose members are the workers: drop "
            f"--cluster {settings.cluster}"
        )
    if distributed is not None and settings.tls_cert is None:
        log.warning(
            "the members of this distributed task talk in clear text, and anything on their "
            "network can reach the scheduler: set MOUNTPROC_TLS_CA_FILE, MOUNTPROC_TLS_CERT "
            "and MOUNTPROC_TLS_KEY on every member to encrypt and authenticate them"
        )
    return ResolvedRun(
        settings, source, outputs, scratch, strict, on_vh, params, distributed, found
    )


def _scheduler_from_file(settings: RunSettings) -> RunSettings:
    """With ``--scheduler-file``, the address it holds becomes ``--scheduler``."""
    path = settings.scheduler_file
    if path is None:
        return settings
    if settings.scheduler:
        raise SettingsError("--scheduler and --scheduler-file contradict each other: give one")
    try:
        address = json.loads(path.read_text())["address"]
    except FileNotFoundError:
        raise SettingsError(
            f"--scheduler-file {path}: no such file (start the scheduler first: dask scheduler "
            f"--scheduler-file {path})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError(
            f"--scheduler-file {path}: no scheduler address in it ({exc})"
        ) from None
    try:
        check_tls(settings.tls_ca_file, settings.tls_cert, settings.tls_key, address)
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    return settings.model_copy(update={"scheduler": str(address)})


def _build(
    cli: Mapping[str, Any], vh: Mapping[str, Any], defaults: Mapping[str, Any]
) -> RunSettings:
    class _Layered(RunSettings, BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix="MOUNTPROC_", populate_by_name=True, extra="forbid", frozen=True
        )

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
        if err["type"] == "extra_forbidden":
            raise SettingsError(f"unknown setting {flag_name(field)}") from None
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
            if value != "":  # an optional parameter Valohai passed empty: unset
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
