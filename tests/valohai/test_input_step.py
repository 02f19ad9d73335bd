"""``mountproc yaml --input NAME[=DEFAULT_URI] [--on-demand]``: the step declares the input,
passes ``--input NAME`` and mounts nothing; valohai-yaml's linter and parser accept it."""

from __future__ import annotations

from pathlib import Path

import pytest
import valohai_yaml
from helpers import REPO, run_cli
from valohai_yaml.lint import lint_file


def _generated(tmp_path: Path, *args: str) -> valohai_yaml.objs.Config:
    proc = run_cli("yaml", "jobs/resize_images.py", *args, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "valohai.yaml"
    path.write_text(proc.stdout)
    result = lint_file(str(path))
    assert [m["message"] for m in result.messages] == []
    return valohai_yaml.parse(proc.stdout)


def test_an_on_demand_input_is_declared_and_passed(tmp_path: Path) -> None:
    config = _generated(
        tmp_path, "--input", "images=dataset://raw-images/v3", "--on-demand", "--distributed", "2"
    )
    for step in config.steps.values():
        (declared,) = step.inputs.values()
        assert declared.name == "images"
        assert declared.default == "dataset://raw-images/v3"
        assert declared.download.value == "on-demand"
        assert declared.keep_directories.value == "suffix"
        assert not step.mounts
        command = step.build_command({"test_mode": True})
        assert " --input images " in f"{command[-1]} "
        assert "--source" not in command[-1]


def test_a_downloaded_input_keeps_its_folders(tmp_path: Path) -> None:
    config = _generated(tmp_path, "--input", "images", "--since-input")
    (step,) = config.steps.values()
    assert list(step.inputs) == ["images", "previous-manifest"]
    images = step.inputs["images"]
    assert images.default is None
    assert images.download.value == "always"
    assert images.keep_directories.value == "suffix"
    assert "--input images" in step.build_command({})[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "bad name"], "--input bad name: expected NAME or NAME=DEFAULT_URI"),
        (["--on-demand"], "--on-demand needs --input NAME"),
    ],
)
def test_a_bad_input_option_is_one_clear_line(args: list[str], message: str) -> None:
    proc = run_cli("yaml", "jobs/resize_images.py", *args, cwd=REPO)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
