"""Checks for deploy/valohai.yaml, using valohai-yaml's own linter, parser and command builder."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, run_cli

pytest.importorskip("valohai_yaml")

import valohai_yaml
from valohai_yaml.lint import lint_file

YAML_PATH = REPO / "deploy" / "valohai.yaml"
STEP_NAME = "preprocess-images"

EXPECTED_PARAMETERS = {
    "test_mode": ("flag", False),
    "test_size": ("integer", 100),
    "shard_max_files": ("integer", 1000),
    "shard_max_bytes": ("string", "1GiB"),
    "max_failures": ("string", "1%"),
    "dataset": ("string", "dataset://preprocessed-images/v1"),
    "file_timeout": ("float", 300.0),
    "mount_timeout": ("float", 30.0),
    "size": ("integer", 224),
    "quality": ("integer", 90),
    "alias": ("string", None),
}


@pytest.fixture(scope="module")
def step() -> Any:
    config = valohai_yaml.parse(YAML_PATH.read_text(encoding="utf-8"))
    assert list(config.steps) == [STEP_NAME, f"{STEP_NAME}-distributed"]
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
        "--dataset=dataset://preprocessed-images/v1",
        "--shard_max_files=1000",
        "--shard_max_bytes=1GiB",
        "--max_failures=1%",
        "--mount_timeout=30.0",
        "--file_timeout=300.0",
        "--size=128",
        "--quality=90",
    ]


def test_job_parameters_match_the_job_bounds_and_defaults(step: Any) -> None:
    """Valohai's form must not accept a value the job rejects, nor default to another one."""
    from mountproc._jobfile import load_job, read_job_file

    job = load_job(read_job_file(YAML_PATH.parent.parent / "jobs" / "resize_images.py"))
    for name, field in job.params.model_fields.items():
        param = step.parameters[name]
        assert param.default == field.default, name
        bounds = {type(m).__name__: m for m in field.metadata}
        assert param.min == bounds["Ge"].ge, name
        assert param.max == bounds["Le"].le, name


# --- the distributed step, and `mountproc yaml` ---------------------------------------------

REPO = YAML_PATH.parent.parent
REGENERATE = [
    "yaml", "jobs/resize_images.py", "--step-name", STEP_NAME, "--install", "pip install .",
    "--mount-source", "fs-1234abcd.efs.eu-west-1.amazonaws.com:/", "--distributed", "3",
]  # fmt: skip


def _mountproc_yaml(*args: str, cwd: Path = REPO) -> str:
    proc = run_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _lint_text(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "valohai.yaml"
    path.write_text(text)
    result = lint_file(str(path))
    return [f"{m['type']}: {m['message']}" for m in result.messages]


def test_deploy_file_is_what_mountproc_yaml_prints() -> None:
    """The checked-in file and the generator never drift apart (comments aside)."""
    generated = yaml.safe_load(_mountproc_yaml(*REGENERATE))
    assert yaml.safe_load(YAML_PATH.read_text(encoding="utf-8")) == generated


def test_distributed_task_runs_the_distributed_step_on_three_machines() -> None:
    config = valohai_yaml.parse(YAML_PATH.read_text(encoding="utf-8"))
    single, dist = config.steps[STEP_NAME], config.steps[f"{STEP_NAME}-distributed"]
    assert dist.command == single.command
    assert [m.serialize() for m in dist.mounts] == [m.serialize() for m in single.mounts]
    assert set(dist.parameters) == set(single.parameters)
    assert [(v.name, v.default) for v in dist.environment_variables.values()] == [
        ("VH_DOCKER_NETWORK", "host")
    ]
    (task,) = config.tasks.values()
    assert (task.step, task.type.value, task.execution_count) == (dist.name, "distributed", 3)
    assert task.on_child_error is not None
    assert task.on_child_error.value == "stop-all-and-error"  # one failed member stops all


TYPED_JOB = """
from typing import Literal, Optional
from pydantic import BaseModel, Field
from mountproc import Job

class Params(BaseModel):
    scale: float = Field(0.5, ge=0.1, le=1.0, description="Scale factor.")
    grayscale: bool = False
    mode: Literal["fast", "best"] = "fast"
    label: Optional[str] = None
    count: int = Field(3, ge=1)

job = Job(name="typed-job", params=Params, settings={"shard_max_files": 50})

@job.transform
def t(src, ctx):
    return {"txt": src.relpath}
"""

USER_PROJECT = '[project]\nname = "clinic-jobs"\ndependencies = ["mountproc"]\n'
"""A user's repository whose project depends on mountproc: its step installs it with pip."""

PLAIN_JOB = """
from mountproc import Job

job = Job(name="plain-job")

@job.transform
def t(src, ctx):
    return {"bin": src.read_bytes()}
"""


@pytest.mark.parametrize("distributed", [[], ["--distributed", "2"]])
@pytest.mark.parametrize("job_text", [None, TYPED_JOB, PLAIN_JOB], ids=["resize", "typed", "plain"])
def test_every_mountproc_yaml_output_lints(
    tmp_path: Path, job_text: str | None, distributed: list[str]
) -> None:
    job_file = "jobs/resize_images.py"
    cwd = REPO
    if job_text is not None:
        (tmp_path / "the_job.py").write_text(job_text)
        (tmp_path / "pyproject.toml").write_text(USER_PROJECT)
        job_file, cwd = "the_job.py", tmp_path
    text = _mountproc_yaml("yaml", job_file, *distributed, cwd=cwd)
    assert _lint_text(text, tmp_path) == []
    config = valohai_yaml.parse(text)
    assert len(config.steps) == (2 if distributed else 1)


def test_typed_job_parameters_become_valohai_parameters(tmp_path: Path) -> None:
    (tmp_path / "the_job.py").write_text(TYPED_JOB)
    (tmp_path / "pyproject.toml").write_text(USER_PROJECT)
    text = _mountproc_yaml("yaml", "the_job.py", cwd=tmp_path)
    (step,) = valohai_yaml.parse(text).steps.values()
    p = step.parameters
    assert (p["scale"].type, p["scale"].default, p["scale"].min, p["scale"].max) == (
        "float", 0.5, 0.1, 1.0,
    )  # fmt: skip
    assert (p["grayscale"].type, p["grayscale"].default) == ("flag", False)
    assert (p["mode"].type, p["mode"].choices) == ("string", ["fast", "best"])
    assert (p["label"].type, p["label"].optional, p["label"].default) == ("string", True, None)
    assert p["shard_max_files"].default == 50  # the job's own setting default
    assert p["dataset"].default is None  # no dataset: optional, off the command line
    assert p["dataset"].optional
    # a job without a source gets a mount at /mnt/source and says so on its command line
    assert step.command[1] == "mountproc run the_job.py --source /mnt/source {parameters}"
    assert step.mounts[0].destination == "/mnt/source"
    # the parameters Valohai passes are accepted by mountproc run
    argv = shlex.split(step.build_command({"grayscale": True, "mode": "best"})[1])
    assert "--grayscale" in argv
    assert "--mode=best" in argv


def test_a_parameter_valohai_cannot_carry_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "the_job.py").write_text(
        TYPED_JOB.replace("count: int = Field(3, ge=1)", "sizes: list[int] = [1, 2]")
    )
    (tmp_path / "pyproject.toml").write_text(USER_PROJECT)
    proc = run_cli("yaml", "the_job.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert "parameter 'sizes' has the type list[int], which a Valohai parameter cannot carry" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_the_step_names_the_job_file_relative_to_the_repository_root() -> None:
    """Valohai runs the command from the repository root: an absolute path of this machine
    would not exist there."""
    text = _mountproc_yaml("yaml", str(REPO / "jobs" / "resize_images.py"))
    (step,) = valohai_yaml.parse(text).steps.values()
    assert step.command[1] == "mountproc run jobs/resize_images.py {parameters}"


def test_the_since_input_is_optional_and_feeds_since(tmp_path: Path) -> None:
    """``--since-input``: an optional input for the previous manifest, handed to --since; the
    manifest's alias is a parameter, off the command line unless set."""
    text = _mountproc_yaml("yaml", "jobs/resize_images.py", "--since-input")
    assert _lint_text(text, tmp_path) == []
    step = valohai_yaml.parse(text).steps["resize-images"]
    (given,) = step.inputs.values()
    assert (given.name, given.optional, given.default) == ("previous-manifest", True, None)
    command = shlex.split(" ".join(step.build_command({"alias": "grow-latest"})))
    at = command.index("--since")
    assert command[at + 1] == "/valohai/inputs/previous-manifest"
    assert "--alias=grow-latest" in command
    assert not any("alias" in word for word in " ".join(step.build_command({})).split())


def _vh_commands(section: str) -> list[list[str]]:
    """The ``vh execution run`` commands of a section of docs/valohai.md, split into words."""
    text = (REPO / "docs" / "valohai.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line) for line in body.splitlines() if line.startswith("vh execution run")]


def test_the_daily_ingest_commands_parse_with_valohai_cli() -> None:
    """valohai-cli builds its options from the step (a parameter ``alias`` becomes
    ``--alias``, an input ``--previous-manifest``): its own builder parses the recipe's
    commands, without network, against the step ``--since-input`` prints."""
    from valohai_cli.commands.execution.run.dynamic_run_command import RunCommand
    from valohai_cli.models.project import Project

    text = _mountproc_yaml(
        "yaml", "jobs/resize_images.py", "--since-input", "--step-name", "my-job"
    )
    step = valohai_yaml.parse(text).steps["my-job"]
    commands = _vh_commands("Daily ingest")
    assert len(commands) == 2
    seen = []
    for words in commands:
        assert words[:4] == ["vh", "execution", "run", "my-job"]
        args = [w for w in words[4:] if w != "--adhoc"]
        command = RunCommand(Project({"id": "p", "name": "p"}, str(REPO)), step, "c")
        values = command.make_context("my-job", args).params
        assert values["~alias"] == "images-manifest-latest"
        seen.append(values["^previous-manifest"])
    assert seen == [(), ("datum://images-manifest-latest",)]  # the first run: no input


def _project(root: Path, pyproject: str | None) -> Path:
    """A repository with a job file and, if given, a pyproject.toml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "the_job.py").write_text(PLAIN_JOB)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    return root


@pytest.mark.parametrize(
    ("pyproject", "first"),
    [
        (
            '[project]\nname = "clinic-jobs"\ndependencies = ["mountproc[dicom]>=0.1"]\n',
            "pip install .",
        ),
        ('[project]\nname = "mountproc"\n', "pip install ."),
    ],
    ids=["depends-on-mountproc", "is-mountproc"],
)
def test_the_step_installs_the_repository_that_brings_mountproc(
    tmp_path: Path, pyproject: str, first: str
) -> None:
    root = _project(tmp_path / "repo", pyproject)
    step = yaml.safe_load(_mountproc_yaml("yaml", "the_job.py", cwd=root))[0]["step"]
    assert step["command"][0] == first


@pytest.mark.parametrize(
    "pyproject",
    [None, '[project]\nname = "clinic-jobs"\ndependencies = ["mountproc-extras>=1"]\n'],
    ids=["no-project", "unrelated-project"],
)
def test_without_a_way_to_install_mountproc_yaml_says_how(
    tmp_path: Path, pyproject: str | None
) -> None:
    """``pip install mountproc`` would fail on Valohai (not on the public index): never print it."""
    root = _project(tmp_path / "repo", pyproject)
    proc = run_cli("yaml", "the_job.py", cwd=root)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("mountproc: error: where should the step install mountproc from?")
    )
    assert "Traceback" not in proc.stderr
    wheel = "wheels/mountproc-0.1.0-py3-none-any.whl"
    text = _mountproc_yaml("yaml", "the_job.py", "--mountproc-from", wheel, cwd=root)
    assert yaml.safe_load(text)[0]["step"]["command"][0] == f"pip install {wheel}"


def test_the_jobs_own_requirements_are_installed() -> None:
    step = yaml.safe_load(_mountproc_yaml("yaml", "jobs/dicom_to_png.py"))[0]["step"]
    assert step["command"][:2] == ["pip install .", "pip install 'pydicom>=3.0'"]


def test_every_numeric_valohai_setting_has_bounds_valohai_can_carry() -> None:
    """Valohai's min and max are inclusive: an exclusive bound (gt, lt) would be lost, and the
    UI would accept a value mountproc refuses."""
    import annotated_types

    from mountproc._settings import RunSettings, setting_extra

    step = yaml.safe_load(_mountproc_yaml("yaml", "jobs/resize_images.py"))[0]["step"]
    numeric = {p["name"] for p in step["parameters"] if p["type"] in ("integer", "float")}
    for name, field in RunSettings.model_fields.items():
        if setting_extra(name).get("valohai") and name in numeric:
            kinds = {type(m) for m in field.metadata}
            assert not kinds & {annotated_types.Gt, annotated_types.Lt}, name
    (timeout,) = [p for p in step["parameters"] if p["name"] == "mount_timeout"]
    assert timeout["min"] == 1
