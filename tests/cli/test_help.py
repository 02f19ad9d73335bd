"""Every command's --help shows examples; --version answers."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import RESIZE_JOB

from mountproc import __version__
from mountproc._cli import main


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(main.all_commands()))])
def test_every_help_shows_examples(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "mountproc " in result.output.split("Example", 1)[1]


def test_the_commands_are_the_documented_ones() -> None:
    assert sorted(main.all_commands()) == [
        "check", "plan", "report", "run", "sample-data", "try", "verify", "worker", "yaml",
    ]  # fmt: skip


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mountproc, version {__version__}\n"


@pytest.mark.parametrize("command", ["run", "check", "plan"])
def test_help_with_a_job_file_lists_its_parameters(command: str) -> None:
    result = CliRunner().invoke(main, [command, str(RESIZE_JOB), "--help"])
    assert result.exit_code == 0, result.output
    section = result.output.split("Parameters of job resize-images", 1)[1]
    assert "--size INT" in section
    assert "(default: 224; >= 8; <= 16384)" in " ".join(section.split())
    assert "--quality INT" in section


def test_help_without_a_job_file_is_the_commands_own() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert "Parameters of job" not in result.output
