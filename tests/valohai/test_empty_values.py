"""A setting without a value is an optional Valohai parameter that stays off the command line,
and an empty value (``--dataset=``, ``"dataset": ""`` in parameters.json) means unset."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import valohai_yaml
from helpers import run_cli

from mountproc._job import Job
from mountproc._valohai.step import StepOptions, render, valohai_config

BARE = """\
from mountproc import Job

job = Job(name="bare")
job.transform(lambda src, ctx: {"txt": src.read_bytes()})
"""


def test_dataset_without_a_value_stays_off_the_command_line() -> None:
    text = render(valohai_config(Job(name="bare"), StepOptions("jobs/bare.py", install="true")))
    step = valohai_yaml.parse(text).steps["bare"]
    assert step.parameters["dataset"].optional
    assert step.parameters["dataset"].default is None
    argv = shlex.split(step.build_command({})[1])
    assert not [a for a in argv if a.startswith("--dataset")]


@pytest.mark.cluster
@pytest.mark.parametrize("how", ["--dataset=", "parameters.json"])
def test_an_empty_value_means_unset(tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    job = tmp_path / "bare.py"
    job.write_text(BARE)
    config = tmp_path / "config"
    config.mkdir()
    (config / "parameters.json").write_text(
        json.dumps({"dataset": ""} if how != "--dataset=" else {})
    )
    extra = ["--dataset="] if how == "--dataset=" else []
    proc = run_cli("run", job, "--source", src, "--outputs", tmp_path / "out", *extra,
                   cwd=tmp_path, env={"VH_CONFIG_DIR": str(config)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "bare-summary.json").read_text())
    assert summary["dataset"] is None
