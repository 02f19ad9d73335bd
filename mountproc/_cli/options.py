"""The options shared by ``run``, ``check`` and ``plan``, made from the one declaration of every
setting (``RunSettings``), and the job parameters given as ``--NAME=VALUE``."""

from __future__ import annotations

import contextlib
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from mountproc._errors import MountprocError, SettingsError
from mountproc._settings import CLUSTER_SETTINGS, RunSettings, env_names, setting_extra

if typing.TYPE_CHECKING:  # the rest is imported where used: --help needs none of it
    from pydantic.fields import FieldInfo

    from mountproc._job import Job
    from mountproc._records import JobRef
    from mountproc._resolve import ResolvedRun

EXTRA = {"ignore_unknown_options": True, "allow_extra_args": True}
"""Commands that take a job file also take its parameters as ``--NAME=VALUE``."""


param_option = click.option(
    "--param",
    "-p",
    "param_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A job parameter (repeatable); --NAME=VALUE works too.",
)


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with an option per setting, then ``--param``."""
    options = [_option(name, field) for name, field in RunSettings.model_fields.items()]
    options.append(param_option)
    for option in reversed(options):
        fn = option(fn)
    return fn


def _option(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    """A setting's option under its dashed name and Valohai's underscored ``--name=value``
    form. Directories are plain strings here: click.Path stats its value, and a stat of a hung
    mount blocks before any time limit of ours could apply."""
    extra = setting_extra(name)
    dashed = extra.get("flag") or name.replace("_", "-")
    names = list(dict.fromkeys([dashed, dashed.replace("-", "_")]))
    kind = _kind(field.annotation)
    if kind is bool:
        decls = [f"--{n}/--no-{n}" for n in names]
        return click.option(*decls, name, default=None, help=field.description)
    if kind is tuple:
        flags = (f"--{n}" for n in names)
        metavar = extra.get("metavar")
        return click.option(*flags, name, multiple=True, metavar=metavar, help=field.description)
    return click.option(
        *(f"--{n}" for n in names),
        name,
        default=None,
        type=kind,
        metavar=extra.get("metavar"),
        help=field.description,
    )


def _kind(annotation: Any) -> Any:
    """The click type of a setting: bool, tuple (repeatable), int, float, a choice, or text
    (paths, byte sizes and budgets are parsed by the settings themselves)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not typing.Literal and len(args) == 1:
        annotation = args[0]  # X | None
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice(list(typing.get_args(annotation)))
    if typing.get_origin(annotation) is tuple:
        return tuple
    return annotation if annotation in (bool, int, float) else None


def cli_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (the options left unset are absent)."""
    # "--dataset=" (an optional Valohai parameter left empty) means unset too
    return {k: v for k, v in values.items() if v not in (None, (), "") and k != "param_pairs"}


def job_params(job: Job, pairs: Sequence[str], extra: Sequence[str]) -> dict[str, Any]:
    """Job parameters from ``--param NAME=VALUE`` and from ``--NAME[=VALUE]`` extras."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SettingsError(f"--param {pair!r}: expected NAME=VALUE")
        params[name.strip()] = value
    args = list(extra)
    while args:
        token = args.pop(0)
        if not token.startswith("--"):
            raise SettingsError(f"unexpected argument {token!r}")
        name, sep, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name not in job.params.model_fields:
            raise SettingsError(f"no such option: --{name} (see mountproc run --help)")
        if not sep:
            value = args.pop(0) if args and not args[0].startswith("--") else "true"
        params[name] = value
    return params


def names_a_cluster(values: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    """Whether the command line, the environment (under any of the settings' names) or
    Valohai's parameters may give the run a cluster: read before the job and the settings
    load, to know early whether the embedded cluster's workers can start warming up. A
    parameters file that cannot be read counts as one that does (the run reports it)."""
    from mountproc._valohai.environment import read_parameters

    try:
        valohai = read_parameters(environ)
    except SettingsError:
        return True
    given = {k.lower() for k, v in environ.items() if v}  # as pydantic-settings reads them
    for name in CLUSTER_SETTINGS:
        if values.get(name) or valohai.get(name) or given & {n.lower() for n in env_names(name)}:
            return True
    return False


def load(
    job_file: str, ctx: click.Context, values: dict[str, Any]
) -> tuple[JobRef, Job, ResolvedRun]:
    """The job file, its job, and every setting and parameter resolved (``check``, ``plan``)."""
    from mountproc._jobfile import job_ref
    from mountproc._resolve import resolve

    ref, job = job_ref(job_file)
    params = job_params(job, values.get("param_pairs") or (), ctx.args)
    return ref, job, resolve(job, cli_settings(values), params, os.environ)


class JobCommand(click.Command):
    """A command that takes a job file: with ``--help``, the job's own parameters are listed
    too (types, defaults, bounds, descriptions), read from the job file given."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(a in ("--help", "-h") for a in args):
            job_file = next((a for a in args if a.endswith(".py") and Path(a).is_file()), None)
            if job_file is not None:  # loading a job imports more than the bare help needs
                from mountproc._jobfile import job_ref

                # a broken job file: the help without its parameters
                with contextlib.suppress(MountprocError):
                    ctx.meta["mountproc.job"] = job_ref(job_file)[1]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        job: Job | None = ctx.meta.get("mountproc.job")
        if job is None:
            return
        rows = [_param_row(name, f) for name, f in job.params.model_fields.items()]
        with formatter.section(f"Parameters of job {job.name} (--NAME=VALUE, or -p NAME=VALUE)"):
            formatter.write_dl(rows or [("(none)", "this job declares no parameters")])


def _param_row(name: str, field: FieldInfo) -> tuple[str, str]:
    """``--name TYPE`` and its description, default and bounds."""
    kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
    facts = [f"default: {field.default!r}"] if not field.is_required() else ["required"]
    for meta in field.metadata:
        for bound, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, bound, None) is not None:
                facts.append(f"{sign} {getattr(meta, bound)}")
    text = f"{field.description or ''} ({'; '.join(facts)})".strip()
    return f"--{name} {kind.upper()}", text
