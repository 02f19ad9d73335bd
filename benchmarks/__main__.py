"""``python -m benchmarks``: run every benchmark (or ``--only`` some), print the table, save JSON.

Each ``benchmarks/bench_<name>.py`` exposes ``run(cfg: Config) -> list[Comparison]``; the
modules present are found at run time. Exit status: 0 when every comparison has numbers and
every harness check passed (a missed target is reported, not an error), 1 otherwise, 2 for
wrong arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import benchmarks
from benchmarks import report
from benchmarks.common import DASK_PROFILER_ENV, Comparison, Config, compile_checkout

log = logging.getLogger("benchmarks")

ORDER = ("startup", "listing", "memory", "testmode", "e2e", "pool", "latency", "peers", "packing")
DEFAULT_WORK = Path("/tmp/mountproc-bench")


def available() -> list[str]:
    """The names of the benchmark modules present, in the report's order."""
    modules = (m.name for m in pkgutil.iter_modules(benchmarks.__path__))
    found = {name.removeprefix("bench_") for name in modules if name.startswith("bench_")}
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check the harness (CI)")
    p.add_argument("--repeats", type=int, help="timed runs per side (default 3, smoke 2)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {', '.join(ORDER)}")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data, runs and report.json")
    p.add_argument("--no-sshfs", action="store_true", help="skip the sshfs comparisons")
    p.add_argument("--warm", action="store_true", help="never evict inputs from the page cache")
    p.add_argument(
        "--no-dask-profiler",
        action="store_true",
        help="diagnosis: turn off the Dask workers' statistical profiler in mountproc's runs",
    )
    p.add_argument("--images", type=int, default=0, help="camera JPEGs (default 2000, smoke 24)")
    p.add_argument("--note", default="", help="a remark for the report, e.g. 'shared machine'")
    args = p.parse_args(argv)
    present = available()
    for name in args.only or ():
        if name not in present:
            p.error(f"no benchmark {name!r} (present: {', '.join(present)})")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.images < 0:
        p.error("--images must be positive")
    return args


def run_all(cfg: Config, names: Sequence[str]) -> tuple[list[Comparison], dict[str, str]]:
    """Run each named benchmark; a benchmark that raises is an error of the report."""
    comparisons: list[Comparison] = []
    errors: dict[str, str] = {}
    for name in names:
        log.info("benchmark %s", name)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            comparisons += module.run(cfg)
        except Exception as exc:
            log.exception("benchmark %s failed", name)
            errors[name] = f"{type(exc).__name__}: {exc}"
    return comparisons, errors


def succeeded(data: dict[str, object]) -> bool:
    """No errors, every comparison measured or skipped with a reason, every check passed."""
    rows = data["comparisons"]
    assert isinstance(rows, list)
    measured = all(r["skipped"] or (r["ratio"] is not None and not r["error"]) for r in rows)
    return not data["errors"] and measured and all(r["checks_passed"] for r in rows)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the Markdown table, write ``WORK/report.json``; return the exit status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _interrupt)  # unmount and stop what runs, as on Ctrl-C
    note = args.note
    if args.no_dask_profiler:
        os.environ[DASK_PROFILER_ENV] = "False"
        note = f"{note}; Dask worker profiler off (--no-dask-profiler)".lstrip("; ")
    repeats = args.repeats or (2 if args.smoke else 3)
    cfg = Config(args.work, args.smoke, repeats, not args.no_sshfs, not args.warm, args.images)
    cfg.work.mkdir(parents=True, exist_ok=True)
    compile_checkout()  # every side runs this checkout as an installed copy would
    comparisons, errors = run_all(cfg, args.only or available())
    data = report.build(comparisons, cfg, errors, note)
    sys.stdout.write(report.markdown(data))
    log.info("report saved to %s", report.write(data, cfg.work, args.only or ()))
    return 0 if succeeded(data) else 1


if __name__ == "__main__":
    sys.exit(main())
