"""The one place that turns errors into exit codes: 0 done, 1 failure budget exceeded or a run
stopped by its environment, 2 usage/settings/job/mount error, 130/143 interrupted."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import click

from mountproc._errors import MountprocError, Terminated
from mountproc._mounts.table import left_stuck

log = logging.getLogger("mountproc")


class _SigTerm:
    """Turns SIGTERM (how Valohai stops an execution) into a KeyboardInterrupt, and remembers
    it: the exception type does not survive distributed's event loop, the flag does."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> NoReturn:
        self.received = True
        raise Terminated


def guarded(action: Callable[[], None]) -> None:
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


def become(cmd: list[str], env: dict[str, str]) -> NoReturn:
    """Replace this process with ``cmd`` (signals then reach it directly)."""
    log.info("running %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
