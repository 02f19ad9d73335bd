"""Checks for deploy/valohai.yaml, using valohai-yaml's own linter, parser and command builder."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("valohai_yaml")

import valohai_yaml
from valohai_yaml.lint import lint_file

YAML_PATH = Path(__file__).resolve().parent.parent / "deploy" / "valohai.yaml"
STEP_NAME = "preprocess-images"

EXPECTED_PARAMETERS = {
    "test_mode": ("flag", False),
    "test_size": ("integer", 100),
    "shard_max_files": ("integer", 1000),
    "shard_max_bytes": ("string", "1GiB"),
    "max_failures": ("string", "1%"),
    "dataset": ("string", "dataset://preprocessed-images/v1"),
    "size": ("integer", 224),
    "quality": ("integer", 90),
}


@pytest.fixture(scope="module")
def step() -> Any:
    config = valohai_yaml.parse(YAML_PATH.read_text(encoding="utf-8"))
    assert list(config.steps) == [STEP_NAME]
    return config.steps[STEP_NAME]


def _run_args(step: Any, values: dict[str, Any]) -> list[str]:
    """Build the step's commands and return the argv of the `mountproc run` line."""
    commands = step.build_command(values)
    assert commands[0] == "pip install ."
    assert len(commands) == 2
    argv = shlex.split(commands[1])
    assert argv[:3] == ["mountproc", "run", "jobs/resize_images.py"]
    return argv[3:]


def test_lint_has_no_errors_or_warnings() -> None:
    result = lint_file(str(YAML_PATH))
    problems = [f"{m['type']}: {m['message']}" for m in result.messages]
    assert result.error_count == 0, problems
    assert result.warning_count == 0, problems
    assert result.is_valid(), problems


def test_step_image_and_command(step: Any) -> None:
    assert step.image == "python:3.11"
    assert step.command == [
        "pip install .",
        "mountproc run jobs/resize_images.py {parameters}",
    ]


def test_mount_is_readonly_nfs_with_absolute_destination(step: Any) -> None:
    assert len(step.mounts) == 1
    (mount,) = step.mounts
    assert mount.readonly is True
    assert mount.destination.startswith("/")
    assert mount.destination == "/mnt/raw-images"
    assert mount.type == "nfs"
    assert mount.source == "fs-1234abcd.efs.eu-west-1.amazonaws.com:/"


def test_parameters_match_cli(step: Any) -> None:
    assert set(step.parameters) == set(EXPECTED_PARAMETERS)
    for name, (type_, default) in EXPECTED_PARAMETERS.items():
        parameter = step.parameters[name]
        assert parameter.type == type_, name
        assert parameter.default == default, name
        assert type(parameter.default) is type(default), name
        # Default pass-as forms only: --name=value and --name for true flags.
        assert parameter.pass_as is None, name
        assert parameter.pass_true_as is None, name
        assert parameter.pass_false_as is None, name


def test_every_parameter_has_a_description(step: Any) -> None:
    for name, parameter in step.parameters.items():
        assert parameter.description, name
        assert parameter.description.strip(), name


def test_true_flag_is_passed_as_bare_option(step: Any) -> None:
    args = _run_args(step, {"test_mode": True})
    assert "--test_mode" in args
    assert not any(arg.startswith("--test_mode=") for arg in args)


@pytest.mark.parametrize("values", [{"test_mode": False}, {}])
def test_false_or_unset_flag_passes_nothing(step: Any, values: dict[str, Any]) -> None:
    args = _run_args(step, values)
    assert not any("test_mode" in arg for arg in args), args


def test_values_are_passed_as_name_equals_value(step: Any) -> None:
    args = _run_args(step, {"size": 128, "test_mode": False})
    assert "--size=128" in args
    assert "--size=224" not in args
    # The other parameters fall back to their defaults.
    assert args == [
        "--test_size=100",
        "--shard_max_files=1000",
        "--shard_max_bytes=1GiB",
        "--max_failures=1%",
        "--dataset=dataset://preprocessed-images/v1",
        "--size=128",
        "--quality=90",
    ]


def test_job_parameters_match_the_job_bounds_and_defaults(step: Any) -> None:
    """Valohai's form must not accept a value the job rejects, nor default to another one."""
    from mountproc._job import load_job, read_job_file

    job = load_job(read_job_file(YAML_PATH.parent.parent / "jobs" / "resize_images.py"))
    for name, field in job.params.model_fields.items():
        param = step.parameters[name]
        assert param.default == field.default, name
        bounds = {type(m).__name__: m for m in field.metadata}
        assert param.min == bounds["Ge"].ge, name
        assert param.max == bounds["Le"].le, name
