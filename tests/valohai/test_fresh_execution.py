"""The step ``mountproc yaml`` prints runs as printed: its commands, rendered by valohai-yaml with
the defaults and with every parameter set, run in a fresh virtualenv in a simulated Valohai
execution (``VH_JOB_ID`` set, config and outputs directories like Valohai's, the repository as
the working directory, the source a read-only bind mount at the step's mount destination, in a
mount namespace of its own), and ``mountproc verify`` accepts what they publish."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import valohai_yaml
from helpers import REPO, clean_env, run_cli

from mountproc._demo_data import make_demo_tree

EVERY_PARAMETER: dict[str, Any] = {
    "test_mode": True,
    "test_size": 5,
    "dataset": "dataset://fresh-images/v2",
    "shard_max_files": 3,
    "shard_max_bytes": "64MiB",
    "max_failures": "20%",
    "mount_timeout": 20.0,
    "file_timeout": 60.0,
    "alias": "fresh-manifest-latest",
    "size": 64,
    "quality": 80,
}


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a mount namespace and a bind mount"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount (util-linux)"
    return None


def _copy_repository(dest: Path) -> None:
    """The repository as Valohai checks it out: the files git knows (and new ones not ignored)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))


def _execution(root: Path, commands: list[str], values: dict[str, Any], source: Path) -> Path:
    """Run ``commands`` as a Valohai execution would; return its outputs directory."""
    config, outputs = root / "config", root / "outputs"
    config.mkdir(parents=True)
    outputs.mkdir()
    (config / "parameters.json").write_text(json.dumps(values))
    script = "\n".join(
        [
            "set -eu",
            "mount --make-rprivate /",
            "mount -t tmpfs mountproc-test /mnt",  # only in this namespace
            "mkdir /mnt/raw-images",
            f"mount --bind {shlex.quote(str(source))} /mnt/raw-images",
            "mount -o remount,bind,ro /mnt/raw-images",
            f"cd {shlex.quote(str(root.parent / 'repository'))}",
            *commands,
        ]
    )
    env = clean_env(
        {
            "PATH": f"{root.parent / 'venv' / 'bin'}:{os.environ['PATH']}",
            "VIRTUAL_ENV": str(root.parent / "venv"),
            "VH_JOB_ID": "test-execution",
            "VH_OUTPUTS_DIR": str(outputs),
            "VH_CONFIG_DIR": str(config),
            "PYTHONPATH": "",
        }
    )
    proc = subprocess.run(
        ["unshare", "--mount", "bash", "-c", script],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    (root / "stdout.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return outputs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository, a source tree of photos and a fresh virtualenv (empty: the
    step's own commands install into it)."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("fresh")
    _copy_repository(root / "repository")
    make_demo_tree(root / "src", count=12)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    return root


def _published(outputs: Path, values: dict[str, Any]) -> Path:
    """Where a run with ``values`` published: a test-mode run into ``test-mode/``."""
    return outputs / "test-mode" if values.get("test_mode") else outputs


@pytest.mark.slow
@pytest.mark.mount
def test_the_generated_step_runs_as_printed_in_a_fresh_virtualenv(world: Path) -> None:
    text = run_cli("yaml", "jobs/resize_images.py", cwd=world / "repository").stdout
    step = valohai_yaml.parse(text).steps["resize-images"]
    assert set(step.parameters) == set(EVERY_PARAMETER)  # every one of them is tried below
    assert step.mounts[0].destination == "/mnt/raw-images"
    runs: list[tuple[str, dict[str, Any]]] = [
        ("defaults", {}),
        ("every-parameter", EVERY_PARAMETER),
    ]
    for name, values in runs:
        outputs = _execution(world / name, step.build_command(values), values, world / "src")
        published = _published(outputs, values)
        verified = run_cli("verify", published, cwd=world)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        summary = json.loads((published / "resize-images-summary.json").read_text())
        assert summary["files_failed"] == 0
        assert summary["files_ok"] == (5 if values else 12)
        assert summary["params"]["size"] == values.get("size", 224)
        assert summary["dataset"] == (None if values else "dataset://preprocessed-images/v1")


def _readme_steps() -> dict[int, list[str]]:
    """The commands (code spans) of each numbered step of the README's "First run on Valohai"."""
    text = (REPO / "README.md").read_text()
    section = text.split("## First run on Valohai", 1)[1].split("\n## ", 1)[0]
    steps: dict[int, list[str]] = {}
    for number, body in re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |\Z)", section, re.M | re.S):
        spans = re.findall(r"`([^`]+)`", body.replace("\n   ", " "))
        steps[int(number)] = [c for c in spans if c.startswith(("mountproc ", "vh ", "python -m"))]
    return steps


def _vh_values(command: str, step: Any) -> dict[str, Any]:
    """The parameter values valohai-cli's own parsers take from a documented ``vh`` command."""
    from valohai_cli.commands.execution.run.dynamic_run_command import RunCommand
    from valohai_cli.commands.execution.run.frontend_command import run
    from valohai_cli.models.project import Project

    front = run.make_context("run", shlex.split(command)[3:]).params
    cmd = RunCommand(Project({"id": "p", "name": "p"}, str(REPO)), step, "c")
    given = cmd.make_context(front["step_name"], list(front["args"])).params
    defaults = {name: p.default for name, p in step.parameters.items()}
    values = {k[1:]: v for k, v in given.items() if k.startswith("~")}
    return {k: v for k, v in values.items() if v != defaults.get(k)}


@pytest.mark.slow
@pytest.mark.mount
def test_the_readmes_first_run_on_valohai_as_written(world: Path) -> None:
    """Steps 2 to 6, as far as no network is needed: the step generated and checked, a
    test-mode execution, its outputs verified, the real execution registering the dataset
    version, the distributed step."""
    steps, repository = _readme_steps(), world / "repository"
    generate, check = steps[2][0], steps[2][-1]
    assert generate.startswith("mountproc yaml jobs/resize_images.py")
    assert generate.endswith("> valohai.yaml")
    env = clean_env({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    for command in (
        generate.replace("mountproc ", f"{sys.executable} -m mountproc ", 1),
        check.replace("python ", f"{sys.executable} ", 1),
    ):
        done = subprocess.run(
            ["bash", "-c", command], cwd=repository, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, (command, done.stderr)
    step = valohai_yaml.parse((repository / "valohai.yaml").read_text()).steps["resize-images"]
    (test_run,) = steps[3]
    values = _vh_values(test_run, step)
    assert values == {"test_mode": True}
    outputs = _execution(world / "readme-test", step.build_command(values), values, world / "src")
    log = (world / "readme-test" / "stdout.log").read_text()
    assert any(line.startswith("{") and "files_done" in line for line in log.splitlines())
    assert re.search(r"^files +12 ok, 0 failed", log, re.M)  # the summary table
    lines = [
        json.loads(x)
        for x in (_published(outputs, values) / "valohai.metadata.jsonl").read_text().splitlines()
    ]
    assert not any("valohai.dataset-versions" in x["metadata"] for x in lines)
    (verify,) = [c for c in steps[4] if c.startswith("mountproc verify")]
    done = run_cli(*shlex.split(verify)[1:-1], outputs, cwd=world)
    assert done.returncode == 0, done.stdout + done.stderr
    (real_run,) = steps[5]
    values = _vh_values(real_run, step)
    outputs = _execution(world / "readme-real", step.build_command(values), values, world / "src")
    lines = [json.loads(x) for x in (outputs / "valohai.metadata.jsonl").read_text().splitlines()]
    assert {json.dumps(x["metadata"]["valohai.dataset-versions"]) for x in lines} == {
        json.dumps([{"packaging": True, "uri": "dataset://preprocessed-images/v1"}])
    }
    (distributed,) = steps[6]
    args = shlex.split(distributed.replace("...", "jobs/resize_images.py"))[1:]
    assert valohai_yaml.parse(run_cli(*args, cwd=repository).stdout).tasks
