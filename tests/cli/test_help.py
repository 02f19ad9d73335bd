"""Every command's --help shows examples; --version answers."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mountproc import __version__
from mountproc._cli import main


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(main.commands))])
def test_every_help_shows_examples(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "mountproc " in result.output.split("Example", 1)[1]


def test_the_commands_are_the_documented_ones() -> None:
    assert sorted(main.commands) == [
        "check", "plan", "report", "run", "sample-data", "try", "verify", "worker", "yaml",
    ]  # fmt: skip


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mountproc, version {__version__}\n"
