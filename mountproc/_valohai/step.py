"""Valohai steps for any job (``mountproc yaml``): the run settings that matter on Valohai and
the job's typed parameters become Valohai parameters, with their defaults and bounds."""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import ByteSize
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mountproc import __version__
from mountproc._errors import SettingsError
from mountproc._job import Job
from mountproc._settings import RunSettings, setting_extra

DISTRIBUTED_ENV = {"name": "VH_DOCKER_NETWORK", "default": "host"}
"""Members of a distributed task reach the primary's scheduler on its private IP: host
networking exposes the port (as in Valohai's own distributed examples)."""

INPUTS_DIR = "/valohai/inputs"
SINCE_INPUT = "previous-manifest"

_TYPES: dict[type, str] = {bool: "flag", int: "integer", float: "float", str: "string"}


@dataclass(frozen=True)
class StepOptions:
    """What ``mountproc yaml`` is told about the deployment."""

    job_file: str
    step_name: str | None = None
    image: str = "python:3.11"
    install: str = f"pip install mountproc=={__version__}"
    mount_source: str = "nfs-server.internal:/share"
    distributed: int = 0  # members of a distributed task; 0: none
    since_input: bool = False  # an optional input for the previous run's manifest (--since)


def valohai_config(job: Job, opts: StepOptions) -> list[dict[str, Any]]:
    """A valohai.yaml config: the job's step, and with ``distributed`` a distributed step and
    the task that runs it on that many machines."""
    name = opts.step_name or job.name
    step = _step(job, opts, name)
    if not opts.distributed:
        return [{"step": step}]
    dist = {
        **copy.deepcopy(step),  # a copy: YAML would otherwise show anchors and aliases
        "name": f"{name}-distributed",
        "environment-variables": [dict(DISTRIBUTED_ENV)],
    }
    task = {
        "name": f"{name}-on-{opts.distributed}-machines",
        "step": dist["name"],
        "type": "distributed",
        "execution-count": opts.distributed,
        "on-child-error": "stop-all-and-error",  # a member that fails stops the others
        "parameters": [],
    }
    return [{"step": step}, {"step": dist}, {"task": task}]


def render(config: list[dict[str, Any]]) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)


def _step(job: Job, opts: StepOptions, name: str) -> dict[str, Any]:
    destination = job.source if job.source and job.source.startswith("/") else "/mnt/source"
    run = f"mountproc run {opts.job_file}"
    if destination != job.source:
        run += f" --source {destination}"
    if opts.since_input:  # left empty (the first run): a full run
        run += f" --since {INPUTS_DIR}/{SINCE_INPUT}"
    step: dict[str, Any] = {
        "name": name,
        "image": opts.image,
        "command": [opts.install, run + " {parameters}"],
        "mounts": [
            {
                "source": opts.mount_source,
                "destination": destination,
                "type": "nfs",
                "readonly": True,
            }
        ],
        "parameters": _setting_parameters(job) + _job_parameters(job),
    }
    if opts.since_input:
        step["inputs"] = [_since_input(job)]
    return step


def _since_input(job: Job) -> dict[str, Any]:
    """The optional input of an increment: the manifest of the run it builds on."""
    return {
        "name": SINCE_INPUT,
        "optional": True,
        "description": (
            f"The previous run's {job.name}-manifest.parquet (e.g. datum://{job.name}-manifest-"
            "latest, with --alias): only what changed since is processed. Empty: a "
            "full run."
        ),
    }


def _setting_parameters(job: Job) -> list[dict[str, Any]]:
    defaults = {**job.settings, **({"dataset": job.dataset} if job.dataset else {})}
    out = []
    for name, field in RunSettings.model_fields.items():
        if not setting_extra(name).get("valohai"):  # where outputs go is Valohai's business
            continue
        default = defaults.get(name, field.default)  # None: optional, off the command line
        out.append(_parameter(name, field, default, field.description or name))
    return out


def _job_parameters(job: Job) -> list[dict[str, Any]]:
    out = []
    for name, field in job.params.model_fields.items():
        description = field.description or f"Parameter {name!r} of the job {job.name!r}."
        out.append(_parameter(name, field, field.default, description))
    return out


def _parameter(name: str, field: FieldInfo, default: Any, description: str) -> dict[str, Any]:
    kind, optional, choices = _kind(name, field.annotation)
    param: dict[str, Any] = {"name": name, "type": kind}
    if default is not PydanticUndefined and default is not None:
        param["default"] = _value(default)
    elif optional:
        param["optional"] = True
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            param["min"] = meta.ge
        elif isinstance(meta, annotated_types.Le):
            param["max"] = meta.le
    if choices:
        param["choices"] = choices
    param["description"] = " ".join(description.split())
    return param


def _kind(name: str, annotation: Any) -> tuple[str, bool, list[Any]]:
    """Valohai's type of a field, whether it may be left out, and its choices."""
    args = typing.get_args(annotation)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            annotation, optional = rest[0], True
    if typing.get_origin(annotation) is Literal:
        values = list(typing.get_args(annotation))
        kinds = {_TYPES.get(type(v)) for v in values}
        if len(kinds) == 1 and None not in kinds:
            return kinds.pop() or "string", optional, values
    if isinstance(annotation, type) and issubclass(annotation, ByteSize):
        return "string", optional, []
    if isinstance(annotation, type) and annotation in _TYPES:
        return _TYPES[annotation], optional, []
    raise SettingsError(
        f"parameter {name!r} has the type {annotation!r}, which a Valohai parameter cannot "
        "carry: use bool, int, float, str or a Literal of them"
    )


def _value(value: Any) -> Any:
    """A default as Valohai shows it: byte sizes as text such as 1GiB."""
    if isinstance(value, ByteSize):
        return _bytes_text(int(value))
    return value


def _bytes_text(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)
