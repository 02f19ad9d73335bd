"""``mountproc try``: a transform on a few files, here, nothing published: each output
described, or the full traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mountproc._cli.guard import guarded
from mountproc._cli.main import main
from mountproc._cli.options import EXTRA, job_params, param_option
from mountproc._errors import FilesFailed, UsageError
from mountproc._jobfile import job_ref


@main.command("try", context_settings=EXTRA)
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.argument("paths", nargs=-1)
@click.option("--failed-in", metavar="OUTPUTS_DIR", help="Replay the files that failed there.")
@click.option(
    "--limit", type=click.IntRange(1), default=10, show_default=True, help="Files replayed."
)
@click.option("--source", metavar="DIR", help="The source the replayed files are under.")
@param_option
@click.pass_context
def try_(ctx: click.Context, /, job_file: str, paths: tuple[str, ...], **values: Any) -> None:
    """Run JOB_FILE's setup and transform on PATHS here, publishing nothing.

    Each file's outputs are shown (bytes; an image's format, size and mode; a JSON's text) with
    the sample's record, or the transform's full traceback. Exit code 1 if any file failed.

    \b
    Examples:
      mountproc try jobs/resize_images.py photos/a.jpg photos/b.png --size=128
      mountproc try jobs/resize_images.py --failed-in ./outputs --limit 5
    """

    def action() -> None:
        from mountproc._trial import try_files  # Pillow only when needed

        ref, job = job_ref(job_file)
        # unknown options land among the paths: they are the job's parameters
        given = [*paths, *ctx.args]
        params = job_params(job, values["param_pairs"], [a for a in given if a.startswith("--")])
        root, files = _files(tuple(a for a in given if not a.startswith("--")), values)
        failed = 0
        for trial in try_files(job, ref.filename, files, params, root):
            click.echo(str(trial.path))
            for line in trial.lines:
                click.echo(line)
            failed += trial.failed
        if failed:
            raise FilesFailed(f"{failed} of {len(files)} file(s) failed")

    guarded(action)


def _files(paths: tuple[str, ...], values: dict[str, Any]) -> tuple[Path | None, list[Path]]:
    """The files to try: as given, or those that failed in a run's outputs."""
    if values["failed_in"] is None:
        if not paths:
            raise UsageError("name the files to try, or --failed-in OUTPUTS_DIR")
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise UsageError(f"no such file: {missing[0]}")
        return None, [Path(p) for p in paths]
    from mountproc._outputs.report import failed_files

    source, relpaths = failed_files(values["failed_in"], values["limit"])
    root = Path(values["source"]) if values["source"] else source
    if root is None:
        raise UsageError(f"{values['failed_in']}: no summary names the source: pass --source DIR")
    if not relpaths:
        raise UsageError(f"no file failed in {values['failed_in']}")
    return root, [root / rel for rel in relpaths]
