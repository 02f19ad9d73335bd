"""Certificates made by the test with the ``openssl`` command: a CA, and certificates it
signed for 127.0.0.1 (one per role, or a stranger signed by another CA)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl_available() -> bool:
    """True when the ``openssl`` command exists."""
    return shutil.which("openssl") is not None


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pem:
    """A CA file, and a certificate and key signed by it."""

    ca_file: Path
    cert: Path
    key: Path

    def cli(self) -> list[str]:
        """The mountproc / dask options that present these files."""
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key)]  # fmt: skip


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA valid for a day; returns its certificate (the key sits beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


def issue(ca: Path, name: str) -> Pem:
    """A certificate for 127.0.0.1 signed by ``ca``."""
    d = ca.parent
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", ca.name, "-CAkey", ca.with_suffix(".key").name,
        "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", "-extfile", ext.name, cwd=d,
    )  # fmt: skip
    return Pem(ca, d / f"{name}.pem", d / f"{name}.key")
