"""The ``mountproc`` command line: one module per command, a thin layer over the package,
imported when its command runs (``main.COMMANDS``); the only place that turns errors into exit
codes (``guard``)."""

from __future__ import annotations

from mountproc._cli.main import main

__all__ = ["main"]
