"""``mountproc run`` starts the embedded cluster's fork server before it loads the job, the
settings and Dask, unless the run may be given a cluster of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountproc._cli.options import names_a_cluster


def _config(tmp_path: Path, params: dict[str, object] | str) -> dict[str, str]:
    config = tmp_path / "config"
    config.mkdir(parents=True)
    text = params if isinstance(params, str) else json.dumps(params)
    (config / "parameters.json").write_text(text)
    return {"VH_CONFIG_DIR": str(config)}


def test_nothing_names_a_cluster(tmp_path: Path) -> None:
    env = _config(tmp_path, {"size": 64})
    assert not names_a_cluster({"scheduler": None, "cluster": None}, env)


@pytest.mark.parametrize(
    ("values", "env"),
    [
        ({"scheduler": "tcp://10.0.0.5:8786"}, {}),
        ({"scheduler_file": Path("/shared/scheduler.json")}, {}),
        ({"cluster": "slurm"}, {}),
        ({}, {"DASK_SCHEDULER_ADDRESS": "tcp://10.0.0.5:8786"}),
        ({}, {"MOUNTPROC_SCHEDULER_FILE": "/shared/scheduler.json"}),
        ({}, {"MOUNTPROC_CLUSTER": "pbs"}),
    ],
)
def test_the_command_line_or_the_environment_names_one(
    values: dict[str, object], env: dict[str, str], tmp_path: Path
) -> None:
    assert names_a_cluster(values, {**_config(tmp_path, {}), **env})


def test_valohai_parameters_name_one_or_cannot_be_read(tmp_path: Path) -> None:
    assert names_a_cluster({}, _config(tmp_path, {"scheduler": "tcp://10.0.0.5:8786"}))
    assert names_a_cluster({}, _config(tmp_path / "broken", "{not json"))


PROBE = """
import sys
from mountproc._cluster import warm
from mountproc._cli import main

sys.argv = ["mountproc", "run", {job!r}, *{args!r}]
try:
    main()
except SystemExit:
    pass
print("warm", warm.started(), "dask", "distributed" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "warmed"),
    [(["--scheduler", "tcp://127.0.0.1:9"], False), (["--nonsense-setting"], True)],
    ids=["scheduler", "embedded"],
)
def test_the_server_starts_before_the_job_loads(
    tmp_path: Path, args: list[str], warmed: bool
) -> None:
    """A job file that cannot load stops the run before any Dask import: the fork server was
    started already, unless a scheduler was given."""
    job = tmp_path / "broken_job.py"
    job.write_text("raise RuntimeError('a job that does not load')\n")
    env = {**os.environ, "VH_CONFIG_DIR": str(tmp_path / "none")}
    code = PROBE.format(job=str(job), args=args)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "mountproc: error:" in done.stderr, done.stderr
    assert f"warm {warmed} dask False" in done.stderr, done.stderr
