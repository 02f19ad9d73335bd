"""The benchmark report: one row per comparison with the machine and date, as a Markdown table
(to paste into the README) and as JSON in the work directory.

``python -m benchmarks.report [REPORT_JSON]`` prints the table of a saved report again.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mountproc
from benchmarks.common import REPO, Comparison, Config

REPORT_NAME = "report.json"


def machine() -> dict[str, Any]:
    """What ran the benchmarks: CPU, cores, memory, kernel, Python, mountproc and its commit."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mountproc": f"{mountproc.__version__} ({_commit()})",
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    """The checkout's commit, ``+dirty`` when mountproc or the jobs have local changes."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "mountproc", "jobs")
    except (OSError, subprocess.CalledProcessError):
        return "no git checkout"
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    cmd = ["git", "-C", str(REPO), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def row(cmp: Comparison) -> dict[str, Any]:
    """One comparison as plain data, with its medians, ratio and verdict."""
    measured = bool(cmp.baseline_s and cmp.ours_s) and not cmp.skipped
    data = {k: v for k, v in asdict(cmp).items() if k != "check"}
    data["baseline_median"] = statistics.median(cmp.baseline_s) if measured else None
    data["ours_median"] = statistics.median(cmp.ours_s) if measured else None
    data["ratio"] = cmp.ratio if measured else None
    data["met"] = cmp.met if measured else None
    data["checks_passed"] = all(cmp.checks.values())
    data["result"] = _verdict(cmp, measured)
    return data


def _verdict(cmp: Comparison, measured: bool) -> str:
    failed = [name for name, ok in cmp.checks.items() if not ok]
    if cmp.error:
        text = "ERROR (see below)"
    elif cmp.skipped:
        text = f"skipped: {cmp.skipped}"
    elif not measured:
        text = "NO NUMBERS"
    elif cmp.met is None:
        text = "no target"
    else:
        text = "met" if cmp.met else "MISSED"
    return text + "".join(f"; CHECK FAILED: {name}" for name in failed)


def build(
    comparisons: Sequence[Comparison], cfg: Config, errors: dict[str, str], note: str
) -> dict[str, Any]:
    """The whole report as plain data."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"smoke": cfg.smoke, "repeats": cfg.repeats, "work": str(cfg.work)},
        "note": note,
        "comparisons": [row(c) for c in comparisons],
        "errors": errors,
    }


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.1f} ms"
    return f"{value:.4g} {unit}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine and date, the table, then the notes."""
    m = report["machine"]
    lines = [
        f"Benchmarks of {report['date']} on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, mountproc {m['mountproc']}"
        + (" (smoke run: sizes too small for the targets)" if report["config"]["smoke"] else "")
        + (f". {report['note']}" if report["note"] else ""),
        "",
        "| comparison | baseline | median | ours | median | ratio | target | result |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for r in report["comparisons"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"| {r['name']} | {r['baseline']} | {_amount(r['baseline_median'], r['unit'])} "
            f"| {r['ours']} | {_amount(r['ours_median'], r['unit'])} | {ratio} "
            f"| {r['target'] or '-'} | {r['result']} |"
        )
    lines.append("")
    lines += [f"- {r['name']}: {r['note']}" for r in report["comparisons"] if r["note"]]
    lines += [f"- {r['name']}: ERROR {r['error']}" for r in report["comparisons"] if r["error"]]
    lines += [f"- ERROR in {name}: {text}" for name, text in report["errors"].items()]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], work: Path, only: Sequence[str] = ()) -> Path:
    """Save the report as ``work/report.json`` (``report-NAME-....json`` for a run of only some
    benchmarks, so that it does not replace a whole run's); return its path."""
    path = work / (f"report-{'-'.join(only)}.json" if only else REPORT_NAME)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv: Sequence[str]) -> None:
    """Print the Markdown table of a saved report."""
    path = Path(argv[0]) if argv else Path("/tmp/mountproc-bench") / REPORT_NAME
    sys.stdout.write(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
