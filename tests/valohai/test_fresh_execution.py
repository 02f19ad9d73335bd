"""The step ``mountproc yaml`` prints runs as printed: its commands, rendered by valohai-yaml with
the defaults and with every parameter set, run in a fresh virtualenv in a simulated Valohai
execution (``VH_JOB_ID`` set, config and outputs directories like Valohai's, the repository as
the working directory, the source a read-only bind mount at the step's mount destination, in a
mount namespace of its own), and ``mountproc verify`` accepts what they publish."""

from __future__ import annotations

import json
import os
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
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return outputs


@pytest.mark.slow
@pytest.mark.mount
def test_the_generated_step_runs_as_printed_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    repository, source = tmp_path / "repository", tmp_path / "src"
    _copy_repository(repository)
    make_demo_tree(source, count=12)
    text = run_cli("yaml", "jobs/resize_images.py", cwd=repository).stdout
    step = valohai_yaml.parse(text).steps["resize-images"]
    assert set(step.parameters) == set(EVERY_PARAMETER)  # every one of them is tried below
    assert step.mounts[0].destination == "/mnt/raw-images"
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    runs: list[tuple[str, dict[str, Any]]] = [
        ("defaults", {}),
        ("every-parameter", EVERY_PARAMETER),
    ]
    for name, values in runs:
        commands = step.build_command(values)
        outputs = _execution(tmp_path / name, commands, values, source)
        published = outputs / "test-mode" if values.get("test_mode") else outputs
        verified = run_cli("verify", published, cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        summary = json.loads((published / "resize-images-summary.json").read_text())
        assert summary["files_failed"] == 0
        assert summary["files_ok"] == (5 if values else 12)
        assert summary["params"]["size"] == values.get("size", 224)
        assert summary["dataset"] == (None if values else "dataset://preprocessed-images/v1")
