"""Valohai steps for any job (``mountproc yaml``): the run settings that matter on Valohai and
the job's typed parameters become Valohai parameters, with their defaults and bounds."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import ByteSize
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mountproc._errors import SettingsError, UsageError
from mountproc._job import Job
from mountproc._settings import RunSettings, setting_extra

DISTRIBUTED_ENV = {"name": "VH_DOCKER_NETWORK", "default": "host"}
"""Members of a distributed task reach the primary's scheduler on its private IP: host
networking exposes the port (as in Valohai's own distributed examples)."""

INPUTS_DIR = "/valohai/inputs"
SINCE_INPUT = "previous-manifest"

_TYPES: dict[type, str] = {bool: "flag", int: "integer", float: "float", str: "string"}


@dataclass(frozen=True)
class SourceInput:
    """``mountproc yaml --input NAME[=DEFAULT_URI] [--on-demand]``: the step's source is this
    input instead of a mount."""

    name: str
    default: str | None = None
    on_demand: bool = False

    @classmethod
    def parse(cls, text: str, on_demand: bool) -> SourceInput:
        """``NAME`` or ``NAME=DEFAULT_URI``."""
        name, _, default = text.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise SettingsError(f"--input {text}: expected NAME or NAME=DEFAULT_URI")
        return cls(name, default or None, on_demand)


@dataclass(frozen=True)
class StepOptions:
    """What ``mountproc yaml`` is told about the deployment."""

    job_file: str
    step_name: str | None = None
    image: str = "python:3.11"
    install: str = "pip install ."  # how the step installs mountproc (see install_command)
    mount_source: str = "nfs-server.internal:/share"
    distributed: int = 0  # members of a distributed task; 0: none
    since_input: bool = False  # an optional input for the previous run's manifest (--since)
    source_input: SourceInput | None = None  # a Valohai input is the source (--input)


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
    import yaml  # here: every command's start-up would pay for it

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
        "command": [opts.install, *_requirements(job), run + " {parameters}"],
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
    return _from_input(step, opts.source_input)


def _from_input(step: dict[str, Any], source: SourceInput | None) -> dict[str, Any]:
    """The step with a Valohai input as its source: declared, passed as ``--input``, no mount."""
    if source is None:
        return step
    declared: dict[str, Any] = {"name": source.name}
    if source.default:
        declared["default"] = source.default
    declared["keep-directories"] = "suffix"  # files keep their folders: the tree's paths
    if source.on_demand:
        declared["download"] = "on-demand"
    declared["description"] = "The files to process" + (
        ": downloaded by the workers as they go." if source.on_demand else "."
    )
    run = re.sub(r" --source \S+", "", step["command"][-1])
    run = run.replace(" {parameters}", f" --input {source.name} {{parameters}}")
    step = {**step, "command": [*step["command"][:-1], run]}
    step.pop("mounts", None)
    step["inputs"] = [declared, *step.get("inputs", [])]
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


def install_command(root: Path, mountproc_from: str | None) -> str:
    """How a step run from the repository ``root`` installs mountproc: from ``mountproc_from``
    (anything pip installs: a git URL, a wheel in the repository), or the repository itself
    when it is mountproc or a project that depends on it. mountproc is not on the public
    package index, so ``pip install mountproc`` would fail before any work."""
    if mountproc_from:
        return f"pip install {shlex.quote(mountproc_from)}"
    if _installs_mountproc(root):
        return "pip install ."
    raise UsageError(
        f"where should the step install mountproc from? {root} is not a Python project that "
        "is or depends on mountproc (its pyproject.toml), and mountproc is not on the public "
        "package index: pass --mountproc-from git+https://github.com/ORG/mountproc@TAG (or a "
        "wheel in the repository), or --install COMMAND"
    )


def _installs_mountproc(root: Path) -> bool:
    """Whether ``pip install .`` at ``root`` installs mountproc: the project is mountproc, or
    names it among its dependencies."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8", errors="replace")
    if sys.version_info < (3, 11):  # no tomllib: the declaration as text
        return re.search(r"""["']mountproc(\[[^\]]*\])?\s*([<>=!~;@"']|$)""", text) is not None
    tomllib = importlib.import_module("tomllib")  # Python 3.11+
    try:
        project = tomllib.loads(text).get("project", {})
    except ValueError:  # tomllib.TOMLDecodeError
        return False
    deps = [*project.get("dependencies", []), project.get("name", "")]
    return any(re.match(r"mountproc\b(?![-_.])", str(d).strip().lower()) for d in deps)


def _requirements(job: Job) -> list[str]:
    """The step's command that installs what the job's transform imports, if anything."""
    if not job.requirements:
        return []
    return ["pip install " + " ".join(shlex.quote(r) for r in job.requirements)]


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
