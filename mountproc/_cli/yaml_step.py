"""``mountproc yaml``: a Valohai step (and distributed task) for a job."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main
from mountproc._errors import SettingsError
from mountproc._jobfile import job_ref
from mountproc._valohai.pipeline import DEFAULT_INPUT, pipeline_config
from mountproc._valohai.step import (
    SINCE_INPUT,
    SourceInput,
    StepOptions,
    install_command,
    render,
    valohai_config,
)

log = logging.getLogger(__name__)


@main.command("yaml")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--step-name", help="Name of the step (default: the job's name).")
@click.option("--image", default=StepOptions.image, show_default=True, help="Docker image.")
@click.option(
    "--mountproc-from",
    metavar="SPEC",
    help="Where the step installs mountproc from: anything pip installs (a git URL such as "
    "git+https://github.com/ORG/mountproc@TAG, a wheel in the repository). Default: the "
    "repository itself (pip install .) when it is mountproc or depends on it.",
)
@click.option(
    "--install",
    metavar="COMMAND",
    help="The step's first command instead, as given (e.g. pip install -r requirements.txt).",
)
@click.option(
    "--mount-source",
    default=StepOptions.mount_source,
    show_default=True,
    help="The NFS export of the source: SERVER:/EXPORT (on-prem NFS), "
    "fs-ID.efs.REGION.amazonaws.com:/ (AWS EFS) or IP:/SHARE (GCP Filestore).",
)
@click.option(
    "--distributed",
    type=click.IntRange(2),
    help="Also a distributed step and a task that runs it on this many machines.",
)
@click.option(
    "--since-input",
    is_flag=True,
    help=f"Declare an optional input, {SINCE_INPUT}, for the manifest of the run to build on "
    "(--since): only what changed since is processed; left empty, a full run.",
)
@click.option(
    "--input",
    "source_input",
    metavar="NAME[=DEFAULT_URI]",
    help="The source is this Valohai input instead of a mount (e.g. "
    "images=dataset://raw-images/v3): declared in the step and passed as --input NAME.",
)
@click.option(
    "--on-demand",
    is_flag=True,
    help="With --input: declare it `download: on-demand`, its files downloaded by the workers "
    "as they go (nothing is downloaded before the run).",
)
@click.option(
    "--pipeline",
    metavar="TRAIN_STEP[:INPUT]",
    help="Also a pipeline from this step into a training step (yours, from ./valohai.yaml, or "
    f"a stub), its edges carrying the tars and the wids index into INPUT (default "
    f"{DEFAULT_INPUT}).",
)
def yaml_(
    job_file: str,
    step_name: str | None,
    image: str,
    mountproc_from: str | None,
    install: str | None,
    mount_source: str,
    distributed: int | None,
    since_input: bool,
    source_input: str | None,
    on_demand: bool,
    pipeline: str | None,
) -> None:
    """Print a valohai.yaml step for JOB_FILE: its settings and typed job parameters become
    Valohai parameters, the source an NFS mount, read-only.

    \b
    Examples:
      mountproc yaml jobs/resize_images.py > valohai.yaml
      mountproc yaml jobs/resize_images.py --mount-source 10.0.0.2:/share --distributed 4
      mountproc yaml jobs/resize_images.py --pipeline train:shards > valohai.yaml
    """

    def action() -> None:
        _, job = job_ref(job_file)
        # Valohai runs the command from the repository root: name the file relative to it
        where = Path(job_file).absolute()
        in_repo = where.is_relative_to(Path.cwd())
        shown = where.relative_to(Path.cwd()).as_posix() if in_repo else job_file
        if not in_repo:
            log.warning(
                "%s is outside this directory: the step names it as given, but Valohai runs "
                "the step from the repository root; run mountproc yaml from there",
                job_file,
            )
        command = install or install_command(Path.cwd(), mountproc_from)
        opts = StepOptions(
            shown, step_name, image, command, mount_source, distributed or 0, since_input,
            source_input=_source_input(source_input, on_demand),
        )  # fmt: skip
        config = valohai_config(job, opts)
        if pipeline:
            users = Path.cwd() / "valohai.yaml"
            existing = users if users.is_file() else None
            config += pipeline_config(config[0]["step"], job.name, pipeline, existing)
        click.echo(render(config), nl=False)

    guarded(action)


def _source_input(text: str | None, on_demand: bool) -> SourceInput | None:
    """``--input NAME[=DEFAULT_URI]`` and ``--on-demand`` as the step's source."""
    if text is None:
        if on_demand:
            raise SettingsError("--on-demand needs --input NAME")
        return None
    return SourceInput.parse(text, on_demand)
