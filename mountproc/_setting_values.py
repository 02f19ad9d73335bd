"""The values some settings take, parsed and checked: the failure budget, Dask resources, the
adaptive bounds of worker jobs, and the TLS files."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path


@dataclass(frozen=True)
class FailureBudget:
    """How many failed files a run may have: an absolute count, or a fraction of the files."""

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> FailureBudget:
        """Parse ``"10"``, ``"0.05"`` or ``"5%"``."""
        t = text.strip()
        if re.fullmatch(r"\d+", t):
            return cls(count=int(t))
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(%?)", t)
        if not m:
            raise ValueError("expected a count (10), a fraction (0.05) or a percentage (5%)")
        value = float(m.group(1)) / (100 if m.group(2) else 1)
        if not 0 <= value <= 1:
            raise ValueError("a fraction must be between 0 and 1 (or 0% and 100%)")
        return cls(fraction=value)

    def allows(self, failed: int, total: int) -> bool:
        """True when ``failed`` files out of ``total`` are within the budget."""
        return failed <= self.most(total)

    def most(self, total: int) -> int:
        """How many of ``total`` files may fail."""
        if self.count is not None:
            return self.count
        # exact decimal arithmetic: 0.29 * 100 is 28.999999999999996 in floating point
        return math.floor(Fraction(repr(self.fraction or 0.0)) * total)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{(self.fraction or 0) * 100:g}%"


def parse_resources(text: str) -> dict[str, float]:
    """``GPU=1,MEMORY=2e9`` as Dask resources; raise ValueError naming a bad item."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) or amount <= 0:
            raise ValueError(f"{item.strip()!r} is not NAME=AMOUNT (e.g. GPU=1)")
        out[name] = amount
    return out


def parse_adapt(text: str) -> tuple[int, int]:
    """``"0:8"`` as adaptive bounds on worker jobs; raise ValueError saying what is wrong."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not MIN:MAX worker jobs (e.g. 0:8)")
    low, high = int(m.group(1)), int(m.group(2))
    if high < 1 or low > high:
        raise ValueError(f"{text!r}: MAX must be at least 1 and at least MIN (e.g. 0:8)")
    return low, high


def check_tls(
    ca_file: Path | None, cert: Path | None, key: Path | None, scheduler: str | None
) -> bool:
    """Whether TLS files are given; raise ValueError when they come without each other, without
    a ``tls://`` scheduler that needs them, or with a scheduler that would not use them."""
    files = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    given = [flag for flag, path in files.items() if path is not None]
    if given and len(given) < len(files):
        missing = ", ".join(flag for flag in files if flag not in given)
        raise ValueError(f"TLS needs --tls-ca-file, --tls-cert and --tls-key: {missing} missing")
    if scheduler and scheduler.startswith("tls://") and not given:
        raise ValueError(
            f"the scheduler {scheduler} uses TLS: pass --tls-ca-file, --tls-cert and --tls-key "
            "(the CA that signed the scheduler's certificate, and this client's certificate "
            "and key)"
        )
    if given and scheduler and not scheduler.startswith("tls://"):
        raise ValueError(
            f"TLS files were given but the scheduler address {scheduler} is not tls://: use "
            "tls://HOST:PORT, or drop the --tls-* options"
        )
    for flag, path in files.items():
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    return bool(given)
