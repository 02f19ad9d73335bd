"""Every setting is declared once, in ``RunSettings``: the command-line options, ``check``'s
report, ``mountproc yaml``'s parameters and the README's settings table follow it, and this
fails when one of them drifts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from helpers import REPO, clean_env
from pydantic import ByteSize

from mountproc._cli import main
from mountproc._job import Job
from mountproc._settings import RunSettings, setting_extra
from mountproc._valohai.step import StepOptions, valohai_config

FIELDS = RunSettings.model_fields


def _flag(name: str) -> str:
    return "--" + (setting_extra(name).get("flag") or name.replace("_", "-"))


@pytest.mark.parametrize("command", ["run", "check", "plan"])
def test_every_setting_is_an_option_with_its_description(command: str) -> None:
    cmd = main.all_commands()[command]
    options = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    assert set(options) == {*FIELDS, "param_pairs"}
    for name, field in FIELDS.items():
        option = options[name]
        assert _flag(name) in option.opts, name
        assert option.help == field.description, name
        assert "--" + _flag(name)[2:].replace("-", "_") in (*option.opts, *option.secondary_opts)


def test_every_setting_has_a_description() -> None:
    for name, field in FIELDS.items():
        assert field.description, name
        assert field.description.endswith("."), name


def test_the_step_offers_exactly_the_valohai_settings() -> None:
    step = valohai_config(Job(name="bare"), StepOptions("jobs/bare.py"))[0]["step"]
    offered = {p["name"]: p for p in step["parameters"]}
    wanted = [name for name in FIELDS if setting_extra(name).get("valohai")]
    assert list(offered) == wanted
    for name in wanted:
        assert offered[name]["description"] == " ".join((FIELDS[name].description or "").split())


def _readme_rows() -> dict[str, str]:
    """The README's settings table: each flag it names, with its row's default cell."""
    text = (REPO / "README.md").read_text()
    table = text.split("## Settings", 1)[1].split("\n\n")[2]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        for flag in re.findall(r"`(--[a-z][a-z-]*)", cells[0]):
            rows[flag] = cells[1]
    return rows


def _shown(default: Any) -> str | None:
    """How the README's default cell must show a default (None: in its own words)."""
    if isinstance(default, bool):
        return "off" if not default else "on"
    if isinstance(default, ByteSize):
        return f"{int(default) >> 30}GiB"
    if isinstance(default, (int, float)):
        return f"{default:g}"
    if isinstance(default, str):
        return default
    return None


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    rows = _readme_rows()
    assert set(rows) == {_flag(name) for name in FIELDS} | {"--param"}
    for name, field in FIELDS.items():
        shown = _shown(field.default)
        if shown is not None:
            assert shown in rows[_flag(name)], (name, rows[_flag(name)])


def test_check_reports_every_setting(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x")
    job = tmp_path / "bare.py"
    job.write_text(
        "from mountproc import Job\njob = Job(name='bare')\njob.transform(lambda s, c: {})\n"
    )
    args = ["check", str(job), "--source", str(tmp_path / "src")]
    args += ["--outputs", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch")]
    result = CliRunner().invoke(main, args, env=clean_env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    reported = re.findall(r"^  (--[a-z-]+) +=", result.output, re.M)
    assert reported == ["--" + name.replace("_", "-") for name in FIELDS]


def test_the_deploy_step_lists_the_valohai_settings() -> None:
    config = yaml.safe_load((REPO / "deploy" / "valohai.yaml").read_text())
    names = [p["name"] for p in config[0]["step"]["parameters"]]
    assert names[: len([n for n in FIELDS if setting_extra(n).get("valohai")])] == [
        n for n in FIELDS if setting_extra(n).get("valohai")
    ]
