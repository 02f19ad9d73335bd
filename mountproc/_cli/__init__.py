"""The ``mountproc`` command line: parses arguments, shows progress, and alone turns errors into
exit codes (0 done, 1 failure budget exceeded, 2 usage/settings/job/mount error, 130/143
interrupted)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from mountproc import __version__
from mountproc._cli.progress import Progress, final_metrics, summary_table
from mountproc._cluster.client import PROFILER_ENV, TlsFiles, worker_command
from mountproc._cluster.placement import member_command
from mountproc._errors import FailureBudgetExceeded, MountprocError, SettingsError
from mountproc._job import Job, load_job, read_job_file
from mountproc._mounts.preflight import human_bytes
from mountproc._mounts.table import left_stuck
from mountproc._runner import Preflight, check_cluster, preflight, preflight_source, run_job
from mountproc._settings import ResolvedRun, check_tls, resolve
from mountproc._valohai.step import StepOptions

log = logging.getLogger("mountproc")

EXTRA = {"ignore_unknown_options": True, "allow_extra_args": True}


class Terminated(KeyboardInterrupt):
    """SIGTERM (how Valohai stops an execution), handled like Ctrl-C."""


def _opt(name: str, **kw: Any) -> Callable[[Any], Any]:
    """An option under its dashed name and Valohai's underscored ``--name=value`` form."""
    decls = dict.fromkeys([f"--{name}", "--" + name.replace("-", "_")])
    return click.option(*decls, default=None, **kw)


def _flag(name: str, help_text: str) -> Callable[[Any], Any]:
    under = name.replace("-", "_")
    decls = [f"--{name}/--no-{name}"] + ([f"--{under}/--no-{under}"] if under != name else [])
    return click.option(*decls, default=None, help=help_text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mountproc")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Batch preprocessing of huge datasets on network file systems, on Dask, for Valohai.

    \b
    Examples:
      mountproc sample-data ./photos && mountproc run jobs/resize_images.py --source ./photos
      mountproc run jobs/resize_images.py --test-mode
      mountproc plan jobs/resize_images.py --source /mnt/raw-images
      mountproc verify ./outputs
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if verbose < 2:
        logging.getLogger("distributed").setLevel(logging.WARNING)


def _run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    # directories are plain strings here: click.Path stats its value, and a stat of a hung
    # mount blocks before any time limit of ours could apply
    options = [
        _opt("source", metavar="DIR", help="Source directory (default: the job's)."),
        _opt(
            "outputs",
            metavar="DIR",
            help="Outputs directory (default: $VH_OUTPUTS_DIR; /valohai/outputs on Valohai; "
            "else ./outputs).",
        ),
        _opt("scratch", metavar="DIR", help="Working directory for shards."),
        _flag("test-mode", "Process a small deterministic subset (also TEST_MODE=true)."),
        _opt("test-size", type=int, help="Files in the test-mode subset (default 100)."),
        _opt("workers", type=int, help="Workers of the embedded local cluster (default: CPUs)."),
        _opt("threads-per-worker", type=int, help="Threads per local worker (default 1)."),
        _opt(
            "scheduler", help="Address of an existing Dask scheduler (also DASK_SCHEDULER_ADDRESS)."
        ),
        _opt("tls-ca-file", metavar="FILE", help="CA certificate of a tls:// scheduler."),
        _opt("tls-cert", metavar="FILE", help="This client's TLS certificate (PEM)."),
        _opt("tls-key", metavar="FILE", help="This client's TLS private key (PEM)."),
        _opt(
            "worker-wait",
            type=float,
            help="Seconds to wait for workers to join an existing scheduler (default 60).",
        ),
        _opt(
            "scheduler-port",
            type=int,
            help="Port of the scheduler a Valohai distributed task's primary starts (8786).",
        ),
        _opt(
            "crawl",
            type=click.Choice(["auto", "driver", "cluster"]),
            help="Where the tree is listed: here, or on the cluster's workers (auto: on the "
            "workers of an existing or distributed cluster).",
        ),
        _opt(
            "crawl-threads",
            type=int,
            help="Threads that list the tree here (default: 16 on a network file system, "
            "1 on a local disk).",
        ),
        _opt("dataset", help="Valohai dataset version: dataset://NAME/VERSION."),
        _opt("dataset-from", help="Base the dataset version on this one (dataset://NAME/VERSION)."),
        _flag("dataset-start-fresh", "Start the dataset version empty."),
        click.option(
            "--dataset-alias",
            "--dataset_alias",
            "dataset_aliases",
            multiple=True,
            help="Targeting alias for the dataset version (repeatable).",
        ),
        _opt("shard-max-files", type=int, help="Files per shard at most (default 1000)."),
        _opt("shard-max-bytes", help="Source bytes per shard at most, e.g. 512MiB (default 1GiB)."),
        _opt("max-failures", help="Failure budget: a count (10) or a fraction (0.01, 1%)."),
        _flag("strict-mounts", "Require the source to be a mount (default: on Valohai only)."),
        _flag("allow-writable", "Accept a source mounted read-write."),
        _flag("allow-empty", "Accept a source with no files (default: an error)."),
        _opt(
            "mount-timeout",
            type=float,
            help="Seconds a mount may take to answer a probe before it counts as hung "
            "(default 30).",
        ),
        _opt(
            "file-timeout",
            type=float,
            help="Seconds one file's transform may take; the file then fails (default 300, "
            "0: no limit).",
        ),
        _opt(
            "min-free-space",
            help="Free space that scratch and outputs must have at the start, e.g. 20GiB "
            "(default 1GiB).",
        ),
        _flag("fresh", "Replace earlier results of this job in outputs."),
        click.option(
            "--param",
            "-p",
            "param_pairs",
            multiple=True,
            metavar="NAME=VALUE",
            help="A job parameter (repeatable); --NAME=VALUE works too.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _cli_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if v is not None and k != "param_pairs"}
    if not out.get("dataset_aliases"):
        out.pop("dataset_aliases", None)
    return out


def _job_params(job: Job, pairs: Sequence[str], extra: Sequence[str]) -> dict[str, Any]:
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


def _load(
    job_file: str, ctx: click.Context, values: dict[str, Any]
) -> tuple[Any, Job, ResolvedRun]:
    ref = read_job_file(job_file)
    job = load_job(ref)
    cli_params = _job_params(job, values.get("param_pairs") or (), ctx.args)
    return ref, job, resolve(job, _cli_values(values), cli_params, os.environ)


@main.command(context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@_run_options
@click.pass_context
def run(ctx: click.Context, /, job_file: str, **values: Any) -> None:
    """Run JOB_FILE over its source: shard, transform, tar into outputs.

    \b
    Examples:
      mountproc run jobs/resize_images.py --source ./photos
      mountproc run jobs/resize_images.py --test-mode
      mountproc run jobs/resize_images.py --size=128 --scheduler tcp://10.0.0.5:8786
    """

    def action() -> None:
        ref, job, resolved = _load(job_file, ctx, values)
        task = resolved.distributed
        if task is not None and not task.is_primary:  # a worker of the primary's cluster
            preflight_source(job, resolved)
            _become(member_command(resolved))
        progress = Progress(live=sys.stdout.isatty())
        try:
            report = run_job(job, ref, resolved, progress=progress)
        finally:
            progress.close()
        if not progress.live:  # the last metrics line, for Valohai's charts
            click.echo(final_metrics(report.summary))
        for line in summary_table(report.summary, resolved.outputs):
            click.echo(line)
        if not report.within_budget:
            raise FailureBudgetExceeded(
                f"{report.summary['files_failed']} of {report.summary['files_selected']} files "
                f"failed, more than --max-failures={resolved.settings.max_failures}: no dataset "
                "version was registered; see the manifest for the reasons"
            )

    _guarded(action)


def _become(cmd: list[str]) -> NoReturn:
    """Replace this process with ``cmd`` (a worker: signals reach it directly), Dask's worker
    profiler off unless the environment says otherwise (see ``_cluster.NO_PROFILER``)."""
    log.info("running %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    env = {PROFILER_ENV: "False", **os.environ}
    os.execve(cmd[0], cmd, env)


@main.command()
@click.argument("scheduler")
@click.option(
    "--nworkers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes on this machine.",
)
@click.option(
    "--nthreads",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Threads per worker process.",
)
@click.option("--name", help="Worker name (with --nworkers N, -0 .. -N-1 is appended).")
@click.option("--host", help="Address the workers listen on (default: chosen by Dask).")
@click.option("--tls-ca-file", metavar="FILE", help="CA certificate of the tls:// cluster.")
@click.option("--tls-cert", metavar="FILE", help="This worker's certificate (PEM).")
@click.option("--tls-key", metavar="FILE", help="This worker's private key (PEM).")
@click.option("--death-timeout", type=float, help="Seconds to wait for the scheduler, then exit.")
def worker(
    scheduler: str,
    nworkers: int,
    nthreads: int,
    name: str | None,
    host: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    death_timeout: float | None,
) -> None:
    """Run Dask workers for mountproc runs that join SCHEDULER; exit when it closes.

    This is `dask worker` with mountproc's defaults (one thread per process: transforms are
    CPU-bound). The machine needs the source mounted read-only at the same path as the driver.

    \b
    Examples:
      mountproc worker tcp://10.0.0.5:8786 --nworkers 8
      mountproc worker tls://10.0.0.5:8786 --tls-ca-file ca.pem --tls-cert w.pem --tls-key w.key
    """

    def action() -> None:
        ca, cert, key = (Path(p) if p else None for p in (tls_ca_file, tls_cert, tls_key))
        try:
            secure = check_tls(ca, cert, key, scheduler)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        tls = TlsFiles(str(tls_ca_file), str(tls_cert), str(tls_key)) if secure else None
        _become(worker_command(scheduler, nworkers, nthreads, name, tls, host, death_timeout))

    _guarded(action)


@main.command(context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@_run_options
@click.pass_context
def check(ctx: click.Context, /, job_file: str, **values: Any) -> None:
    """Check JOB_FILE's settings and mounts without running anything.

    \b
    Example:
      mountproc check jobs/resize_images.py --source /mnt/raw-images --strict-mounts
    """

    def action() -> None:
        _, job, resolved = _load(job_file, ctx, values)
        started = time.monotonic()
        checked = preflight(job, resolved)
        _print_check(checked, time.monotonic() - started)
        if resolved.settings.scheduler:
            workers = check_cluster(job, resolved, checked)
            click.echo(f"workers: {workers} checked at {resolved.settings.scheduler}, all alike")
        _print_settings(resolved)
        click.echo("preflight ok")

    _guarded(action)


@main.command(context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@_run_options
@click.pass_context
def plan(ctx: click.Context, /, job_file: str, **values: Any) -> None:
    """List and shard JOB_FILE's source, time a few of its files here, and estimate the run.

    Nothing is written to outputs or scratch: the listing lives in a temporary directory.

    \b
    Example:
      mountproc plan jobs/resize_images.py --source /mnt/raw-images --workers 16
    """
    from mountproc._planning import plan_job, render

    def action() -> None:
        ref, job, resolved = _load(job_file, ctx, values)
        for line in render(plan_job(job, ref, resolved)):
            click.echo(line)

    _guarded(action)


def _print_check(checked: Preflight, seconds: float) -> None:
    m = checked.mount
    where = f"{m.fstype} {m.source}, {m.kind}" + (f", {m.service}" if m.service else "")
    rows = [
        ("source", str(m.path)),
        ("  mount", f"{m.mount_point} ({where})"),
        ("  mount point", "yes" if m.is_mount_point else "no (a directory inside the mount)"),
        ("  read-only", "yes" if m.readonly else "no"),
        ("  options", ",".join(m.options)),
        ("  answered in", f"{seconds:.3f} s"),
    ]
    for d in checked.dirs:
        rows.append((d.role, f"{d.path} ({d.fstype} on {d.mount_point})"))
        rows.append(("  free", f"{human_bytes(d.free_bytes)} (writable)"))
    for key, value in rows:
        click.echo(f"{key:<16} {value}")


def _print_settings(resolved: ResolvedRun) -> None:
    click.echo("settings:")
    for key, value in resolved.settings.model_dump(mode="json").items():
        click.echo(f"{'  --' + key.replace('_', '-'):<22} = {value}")
    click.echo("job parameters:")
    for key, value in resolved.params.model_dump(mode="json").items():
        click.echo(f"{'  --' + key:<22} = {value}")


@main.command("yaml")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--step-name", help="Name of the step (default: the job's name).")
@click.option("--image", default=StepOptions.image, show_default=True, help="Docker image.")
@click.option(
    "--install",
    default=StepOptions.install,
    show_default=True,
    help="The step's first command: how mountproc gets installed.",
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
def yaml_(
    job_file: str,
    step_name: str | None,
    image: str,
    install: str,
    mount_source: str,
    distributed: int | None,
) -> None:
    """Print a valohai.yaml step for JOB_FILE: its settings and typed job parameters become
    Valohai parameters, the source an NFS mount, read-only.

    \b
    Examples:
      mountproc yaml jobs/resize_images.py > valohai.yaml
      mountproc yaml jobs/resize_images.py --mount-source 10.0.0.2:/share --distributed 4
    """
    from mountproc._valohai.step import render, valohai_config

    def action() -> None:
        job = load_job(read_job_file(job_file))
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
        opts = StepOptions(shown, step_name, image, install, mount_source, distributed or 0)
        click.echo(render(valohai_config(job, opts)), nl=False)

    _guarded(action)


@main.command("sample-data")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(1), default=48, show_default=True)
@click.option("--bad/--no-bad", default=False, help="Also write corrupt and truncated files.")
def sample_data(directory: Path, count: int, bad: bool) -> None:
    """Write a small tree of real sample images to DIRECTORY.

    \b
    Example:
      mountproc sample-data ./sample-photos
      mountproc run jobs/resize_images.py --source ./sample-photos
    """
    from mountproc._demo_data import make_sample_tree

    _guarded(
        lambda: click.echo(
            f"wrote {len(make_sample_tree(directory, count=count, bad=bad))} files to {directory}"
        )
    )


@main.command()
@click.argument("outputs_dir", metavar="OUTPUTS_DIR")
def verify(outputs_dir: str) -> None:
    """Check every tar in OUTPUTS_DIR against valohai.metadata.jsonl and the manifest.

    Each tar is re-read once: its sha256, size, member count and member names must match what
    mountproc run recorded; a truncated, altered, missing or unlisted tar is named, exit 1.

    \b
    Example:
      mountproc verify ./outputs
    """
    from mountproc._outputs.verify import conclusion, verify_outputs

    def action() -> None:
        verdicts = []
        for verdict in verify_outputs(Path(outputs_dir)):
            click.echo(verdict.line())
            verdicts.append(verdict)
        click.echo(conclusion(Path(outputs_dir), verdicts))

    _guarded(action)


class _SigTerm:
    """Turns SIGTERM (how Valohai stops an execution) into a KeyboardInterrupt, and remembers
    it: the exception type does not survive distributed's event loop, the flag does."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> NoReturn:
        self.received = True
        raise Terminated


def _guarded(action: Callable[[], None]) -> None:
    """Run ``action``; a mountproc error becomes one line on stderr and its exit code."""
    sigterm = _SigTerm()
    previous = signal.signal(signal.SIGTERM, sigterm)
    code = 0
    try:
        action()
    except MountprocError as exc:
        click.echo(f"mountproc: error: {exc}", err=True)
        code = exc.exit_code
    except Exception as exc:  # a bug or an environment failure: one line, details with -vv
        log.debug("internal error", exc_info=True)
        click.echo(
            f"mountproc: internal error: {type(exc).__name__}: {exc} (run with -vv for "
            "the traceback)",
            err=True,
        )
        code = 1
    except KeyboardInterrupt:
        click.echo(
            "mountproc: terminated" if sigterm.received else "mountproc: interrupted", err=True
        )
        code = 143 if sigterm.received else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _exit(code)


def _exit(code: int) -> None:
    """Exit with ``code``; skip the interpreter's shutdown, which would wait forever, when a
    worker process blocked on a hung mount could not be stopped."""
    if left_stuck():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)
