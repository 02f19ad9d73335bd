"""Start-up of the command line: ``mountproc --help`` and ``mountproc run --help``.

A user reads the help many times a day; it must not wait for Dask, pandas or pyarrow. The
target is absolute (issue 18: at most 0.25 s each); the baseline is the floor any Python
command pays, a bare interpreter (``python -c pass``) started the same way. Each side is a fresh
process, timed more often than the long comparisons since one run takes a fraction of a second.
(A run over a one-file tree is in ``bench_peers``.)
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace

from benchmarks.common import Comparison, Config, alternate, recording_errors, run_quiet

LIMIT_S = 0.25
REPEATS = 9
COMMANDS = {
    "mountproc --help": ("--help",),
    "mountproc run --help": ("run", "--help"),
}
FLOOR = [sys.executable, "-c", "pass"]


def run(cfg: Config) -> list[Comparison]:
    """One comparison per help command."""
    many = cfg if cfg.smoke else replace(cfg, repeats=max(cfg.repeats, REPEATS))
    return [_compare(many, name, args) for name, args in COMMANDS.items()]


def _compare(cfg: Config, name: str, args: tuple[str, ...]) -> Comparison:
    cmp = Comparison(f"start-up, `{name}`", "`python -c pass` (the interpreter alone)", name)
    cmp.target = f"ours <= {LIMIT_S:g} s (absolute)"
    cmp.check = lambda _ratio: statistics.median(cmp.ours_s) <= LIMIT_S
    ours = [sys.executable, "-m", "mountproc", *args]
    with recording_errors(cmp):
        alternate(cfg, cmp, lambda _i: lambda: run_quiet(FLOOR), lambda _i: lambda: run_quiet(ours))
    cmp.note = "fresh processes, bytecode compiled (as an installed package has it)"
    return cmp
