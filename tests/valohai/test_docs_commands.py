"""Every ``vh execution run`` command in the README, docs/ and deploy/valohai.yaml is parsed by
valohai-cli's own parsers, without network: its ``run`` command's options first, then the
options it builds from the step (parameters and inputs), against the step the text means."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest
import valohai_yaml
from helpers import REPO, run_cli

DOCUMENTS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "deploy" / "valohai.yaml",
]
COMMAND = re.compile(r"vh execution run [^`\n]*")


def _printed(*args: str) -> str:
    proc = run_cli("yaml", *args, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


STEPS: dict[str, Callable[[], str]] = {
    # the step each document's examples mean when they give no --yaml
    "resize-images": lambda: _printed("jobs/resize_images.py"),
    "my-job": lambda: _printed("jobs/resize_images.py", "--since-input", "--step-name", "my-job"),
    "from-input": lambda: _printed(
        "jobs/resize_images.py", "--input", "images", "--step-name", "from-input"
    ),
}


def _commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        for match in COMMAND.finditer(path.read_text(encoding="utf-8")):
            found.append((f"{path.relative_to(REPO)}", match.group(0).strip()))
    return found


def test_the_documents_hold_commands_to_check() -> None:
    assert len(_commands()) >= 6


@pytest.mark.parametrize(("where", "command"), _commands(), ids=lambda v: str(v)[:60])
def test_valohai_cli_accepts_the_documented_command(where: str, command: str) -> None:
    from valohai_cli.commands.execution.run.dynamic_run_command import RunCommand
    from valohai_cli.commands.execution.run.frontend_command import run
    from valohai_cli.models.project import Project

    words = shlex.split(command)
    assert words[:3] == ["vh", "execution", "run"], where
    front = run.make_context("run", words[3:]).params
    name = front["step_name"]
    text = (REPO / front["yaml"]).read_text() if front["yaml"] else STEPS[name]()
    step = valohai_yaml.parse(text).steps[name]
    project = Project({"id": "p", "name": "p"}, str(REPO))
    parsed: dict[str, Any] = (
        RunCommand(project, step, "c").make_context(name, list(front["args"])).params
    )
    given = {w.split("=", 1)[0] for w in front["args"] if w.startswith("--")}
    known = {f"--{k.lstrip('~^').replace('_', '-')}" for k in parsed}
    assert given <= known, (where, given - known)


PIPELINE = re.compile(r"vh pipeline run [^`\n]*")


def test_valohai_cli_accepts_the_documented_pipeline_commands() -> None:
    from valohai_cli.commands.pipeline.run.run import run

    found = [m.group(0) for p in DOCUMENTS for m in PIPELINE.finditer(p.read_text())]
    assert found
    for command in found:
        words = shlex.split(command)
        assert run.make_context("run", words[3:]).params["adhoc"], command


def test_a_misspelt_option_is_refused_by_the_same_parsers() -> None:
    """The check above can fail: valohai-cli refuses what the step does not offer."""
    import click
    from valohai_cli.commands.execution.run.dynamic_run_command import RunCommand
    from valohai_cli.models.project import Project

    step = valohai_yaml.parse(STEPS["resize-images"]()).steps["resize-images"]
    command = RunCommand(Project({"id": "p", "name": "p"}, str(REPO)), step, "c")
    with pytest.raises(click.NoSuchOption):
        command.make_context("resize-images", ["--test_mode"])  # the form the docs once had
