"""Valohai distributed tasks: reading ``distributed.json``, and a simulated three-member task
(three real processes, each with its own config dir, outputs and ``VH_DIST_*`` environment)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import RESIZE_JOB, clean_env, run_cli, tar_digests
from helpers.tlscerts import issue, make_ca, openssl_available

from mountproc._demo_data import make_demo_tree
from mountproc._errors import SettingsError
from mountproc._valohai.environment import read_distributed


def _member(member_id: str, *ips: str) -> dict[str, Any]:
    """One member as Valohai lists it (the shape of valohai-utils' test fixtures)."""
    return {
        "announce_time": "2026-11-24T10:50:21",
        "identity": f"machine-{member_id}",
        "job_id": f"exec-{member_id}",
        "member_id": member_id,
        "network": {"exposed_ports": {}, "local_ips": list(ips), "public_ips": []},
    }


def _config(me: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    mine = next(m for m in members if m["member_id"] == me)
    return {
        "config": {"group_name": "task-1", "member_id": me, "required_count": len(members)},
        "members": members,
        "self": mine,
    }


def _write_config(config_dir: Path, data: dict[str, Any]) -> dict[str, str]:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "distributed.json").write_text(json.dumps(data))
    return {"VH_CONFIG_DIR": str(config_dir)}


MEMBERS = [
    _member("0", "10.0.16.60", "fe80::4001:aff:fe00:103c"),
    _member("2", "10.0.16.62"),
    _member("10", "fe80::1", "10.0.16.70"),
]


def test_no_distributed_json_is_a_single_machine(tmp_path: Path) -> None:
    assert read_distributed({"VH_CONFIG_DIR": str(tmp_path)}) is None


def test_members_are_ranked_as_valohai_utils_ranks_them(tmp_path: Path) -> None:
    """Numeric ids sort as numbers ("2" before "10"); the lowest is the primary; IPv6
    link-local addresses are skipped."""
    env = _write_config(tmp_path, _config("10", MEMBERS))
    task = read_distributed(env)
    assert task is not None
    assert task.member_ids == ("0", "2", "10")
    assert (task.member_id, task.is_primary, task.others) == ("10", False, ("2", "10"))
    assert (task.primary_ip, task.own_ip) == ("10.0.16.60", "10.0.16.70")
    primary = read_distributed(_write_config(tmp_path / "p", _config("0", MEMBERS)))
    assert primary is not None
    assert primary.is_primary


def test_non_numeric_ids_sort_as_text(tmp_path: Path) -> None:
    members = [_member("web-b", "10.0.0.2"), _member("web-a", "10.0.0.1")]
    task = read_distributed(_write_config(tmp_path, _config("web-b", members)))
    assert task is not None
    assert task.member_ids == ("web-a", "web-b")
    assert task.primary_ip == "10.0.0.1"


def test_missing_config_of_a_declared_distributed_task(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"VH_DIST_MEMBER_COUNT=3 says .* is missing"):
        read_distributed({"VH_CONFIG_DIR": str(tmp_path), "VH_DIST_MEMBER_COUNT": "3"})


def test_a_count_of_one_is_a_single_machine(tmp_path: Path) -> None:
    assert read_distributed({"VH_CONFIG_DIR": str(tmp_path), "VH_DIST_MEMBER_COUNT": "1"}) is None


def test_a_malformed_count_without_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"VH_DIST_MEMBER_COUNT=three says"):
        read_distributed({"VH_CONFIG_DIR": str(tmp_path), "VH_DIST_MEMBER_COUNT": "three"})


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"members": "nope"}, "is not as expected"),
        (_config("0", [_member("0", "fe80::1"), _member("1", "10.0.0.1")]), "no usable local IP"),
        ({**_config("0", MEMBERS), "config": {"member_id": "7"}}, "'7' is not among"),
    ],
)
def test_malformed_config_is_one_clear_error(
    tmp_path: Path, data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SettingsError, match=problem):
        read_distributed(_write_config(tmp_path, data))


def test_a_distributed_task_starts_its_own_scheduler(tmp_path: Path) -> None:
    """--scheduler on a member of a distributed task is a contradiction, refused before any
    work."""
    env = _write_config(tmp_path / "config", _config("0", MEMBERS))
    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    proc = run_cli(
        "run", RESIZE_JOB, "--source", src, "--outputs", tmp_path / "out",
        "--scheduler", "tcp://127.0.0.1:8786", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "drop --scheduler tcp://127.0.0.1:8786" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.mount
@pytest.mark.cluster
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_three_member_task_publishes_only_on_the_primary(
    tmp_path: Path, bind_mount: Any, tls: bool
) -> None:
    """Three members on 127.0.0.1, each with its own config dir, outputs and VH_DIST_*
    environment. The two others run in mount namespaces of their own, where a tmpfs hides the
    primary's directory, as on separate machines. The task completes, every member exits 0,
    and the primary's tars are byte-identical to a single-machine run's. With TLS files in
    every member's environment, the members speak tls:// only."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to give the other members a file system view of their own")
    tls_env = {}
    if tls:
        if not openssl_available():
            pytest.skip("needs the openssl command to make certificates")
        pem = issue(make_ca(tmp_path / "pki", "task-ca"), "member")
        tls_env = {"MOUNTPROC_TLS_CA_FILE": str(pem.ca_file), "MOUNTPROC_TLS_CERT": str(pem.cert),
                   "MOUNTPROC_TLS_KEY": str(pem.key)}  # fmt: skip
    data = tmp_path / "data"
    make_demo_tree(data, count=24)
    src = bind_mount(data, tmp_path / "mnt" / "raw-images", readonly=True)
    single = tmp_path / "single"
    common = ["run", str(RESIZE_JOB), "--source", str(src), "--shard-max-files", "4"]
    proc = run_cli(*common, "--outputs", single, "--strict-mounts", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    members = [_member(i, "127.0.0.1") for i in ("0", "1", "2")]
    port = _free_port()
    home = {i: tmp_path / f"member-{i}" for i in ("0", "1", "2")}
    envs = {}
    for i, d in home.items():
        envs[i] = clean_env(
            {
                **_write_config(d / "config", _config(i, members)),
                "VH_JOB_ID": f"exec-{i}",
                "VH_OUTPUTS_DIR": str(d / "outputs"),
                "VH_DIST_MEMBER_ID": i,
                "VH_DIST_MEMBER_INDEX": i,
                "VH_DIST_MEMBER_COUNT": "3",
                "VH_LOCAL_IP": "127.0.0.1",
                "MOUNTPROC_SCHEDULER_PORT": str(port),
                "MOUNTPROC_WORKERS": "1",
                **tls_env,
            }
        )
    cmd = [sys.executable, "-m", "mountproc", *common]
    others = []
    for i in ("1", "2"):
        hide = f'mount -t tmpfs member-{i} {home["0"]} && exec "$@"'
        others.append(
            subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", hide, "sh", *cmd],
                cwd=home[i].parent,
                env=envs[i],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        primary = subprocess.run(
            cmd, cwd=tmp_path, env=envs["0"], capture_output=True, text=True, timeout=240
        )
        ends = [p.communicate(timeout=60) for p in others]
    finally:
        for p in others:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert primary.returncode == 0, primary.stderr
    scheme = "tls" if tls else "tcp"
    assert f"scheduler for the other members at {scheme}://127.0.0.1:{port}" in primary.stderr
    assert "every member joined: 1, 2" in primary.stderr
    assert "2 worker(s) cannot see this machine's scratch" in primary.stderr
    for p, (_, err) in zip(others, ends, strict=True):
        assert p.returncode == 0, err
        assert f"joining the primary member 0 at {scheme}://127.0.0.1:{port}" in err
    assert len(tar_digests(single)) == 6
    assert tar_digests(home["0"] / "outputs") == tar_digests(single)
    for i in ("1", "2"):
        assert not (home[i] / "outputs").exists() or not os.listdir(home[i] / "outputs")
