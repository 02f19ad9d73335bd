"""The real CLI, end to end, on real images and a real LocalCluster."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    NON_UTF8,
    RESIZE_JOB,
    read_manifest,
    read_metadata,
    run_cli,
    tar_members,
)

from mountproc._demo_data import BAD_FILES

pytestmark = pytest.mark.cluster


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(src: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    proc = run_cli("run", RESIZE_JOB, "--source", src, "--outputs", out, *extra, cwd=out.parent)
    return proc.returncode, proc.stdout, proc.stderr


def test_full_run_accounts_for_every_file(
    tmp_path: Path, hostile_tree: tuple[Path, dict[str, Any]]
) -> None:
    src, facts = hostile_tree
    out = tmp_path / "out"
    code, _stdout, stderr = _run(src, out, "--max-failures", "50%", "--shard-max-files", "7")
    assert code == 0, stderr
    rows = {r["path"]: r for r in read_manifest(out)}
    members = tar_members(out)
    in_tars = Counter(m for names in members.values() for m in names)
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) >= 20
    for row in ok:  # every good file: its members, each in exactly one tar, the tar it names
        assert row["members"], row["path"]
        for m in row["members"]:
            assert in_tars[m] == 1
            assert m in members[row["tar"]]
    assert sum(in_tars.values()) == sum(len(r["members"]) for r in ok)
    for bad in BAD_FILES:
        assert rows[bad]["status"] == "failed", bad
        assert rows[bad]["error"], bad
    assert rows[facts["fifo"]]["status"] == "excluded"
    assert "fifo" in rows[facts["fifo"]]["error"]
    assert rows[facts["symlink"]]["status"] == "excluded"
    assert "symlink" in rows[facts["symlink"]]["error"]
    assert (
        rows[NON_UTF8.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")][
            "status"
        ]
        == "ok"
    )
    same = [r for p, r in rows.items() if p.endswith("/same_name.jpg")]
    assert len(same) == 2
    assert same[0]["members"] != same[1]["members"]
    assert "secret" not in json.dumps([r["members"] for r in ok])


def test_outputs_are_published_read_only_with_metadata(
    tmp_path: Path, hostile_tree: tuple[Path, dict[str, Any]]
) -> None:
    src, _ = hostile_tree
    out = tmp_path / "out"
    code, _, stderr = _run(src, out, "--max-failures", "10", "--shard-max-files", "10")
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.endswith((".partial", ".tmp"))]
    lines = read_metadata(out)
    assert {line["file"] for line in lines} <= names
    tars = sorted(n for n in names if n.endswith(".tar"))
    assert tars == sorted(line["file"] for line in lines if line["file"].endswith(".tar"))
    for line in lines:
        target = line["metadata"]["valohai.dataset-versions"]
        assert target == [{"uri": "dataset://preprocessed-images/v1", "packaging": True}]
        if line["file"].endswith(".tar"):
            assert line["metadata"]["sha256"] == _sha(out / line["file"])
    for name in names - {"valohai.metadata.jsonl"}:  # uploaded at once: read-only
        assert not (out / name).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    # read at the end of the execution, and rewritten by later runs: writable
    assert stat.S_IMODE((out / "valohai.metadata.jsonl").stat().st_mode) == 0o644
    summary = json.loads((out / "resize-images-summary.json").read_text())
    assert summary["files_failed"] == len(BAD_FILES)


def test_failure_budget_exceeded_registers_no_dataset(
    tmp_path: Path, hostile_tree: tuple[Path, dict[str, Any]]
) -> None:
    src, _ = hostile_tree
    out = tmp_path / "out"
    code, _, stderr = _run(src, out, "--max-failures", "1", "--keep-going")
    assert code == 1
    assert "failed, more than --max-failures=1" in stderr
    assert "Traceback" not in stderr
    assert all("valohai.dataset-versions" not in line["metadata"] for line in read_metadata(out))
    assert list(out.glob("*.tar"))
    assert (out / "resize-images-manifest.parquet").exists()


def test_test_mode_spreads_over_directories_and_publishes_no_dataset(tmp_path: Path) -> None:
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=40)
    out = tmp_path / "out"
    code, stdout, stderr = _run(src, out, "--test-mode", "--test-size", "5")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["test-mode"]  # beside a full run's outputs
    out = out / "test-mode"
    ok = [r for r in read_manifest(out) if r["status"] == "ok"]
    assert len(ok) == 5
    assert len({r["path"].rsplit("/", 1)[0] for r in ok}) == 5
    for line in read_metadata(out):
        assert "valohai.dataset-versions" not in line["metadata"]
        assert line["metadata"]["valohai.tags"] == ["mountproc-test-mode"]
    assert "test mode" in stdout


def test_same_tars_whatever_the_cluster_size(tmp_path: Path) -> None:
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=30)
    digests = []
    for workers in ("1", "2"):
        out = tmp_path / f"out-{workers}"
        code, _, stderr = _run(src, out, "--workers", workers, "--shard-max-files", "4")
        assert code == 0, stderr
        digests.append({p.name: _sha(p) for p in out.glob("*.tar")})
    assert len(digests[0]) == 8
    assert digests[0] == digests[1]


def test_valohai_style_arguments_parameters_json_and_env(tmp_path: Path) -> None:
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    config = tmp_path / "config"
    config.mkdir()
    (config / "parameters.json").write_text(json.dumps({"size": 32, "shard_max_files": 5}))
    out = tmp_path / "vh-outputs"
    env = {"VH_CONFIG_DIR": str(config), "VH_OUTPUTS_DIR": str(out)}
    proc = run_cli("run", RESIZE_JOB, f"--source={src}", "--quality=70", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "resize-images-summary.json").read_text())
    assert summary["params"] == {"size": 32, "quality": 70}
    assert summary["shards"] == 3  # 12 files, 5 per shard from parameters.json


def test_rerun_with_other_settings_needs_fresh(tmp_path: Path) -> None:
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    out = tmp_path / "out"
    assert _run(src, out)[0] == 0
    code, _, stderr = _run(src, out, "--shard-max-files", "5")
    assert code == 2
    assert "from a run with other settings (--shard-max-files: 1000 -> 5)" in stderr
    assert "--fresh" in stderr
    assert "Traceback" not in stderr
    assert _run(src, out, "--shard-max-files", "5", "--fresh")[0] == 0
    assert len(list(out.glob("*.tar"))) == 3


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--test-size", "0"], "--test-size"),
        (["--max-failures", "lots"], "--max-failures"),
        (["--dataset", "preprocessed/v1"], "dataset://"),
        (["--size=abc"], "'size'"),
        (["--no-such-thing=1"], "--no_such_thing"),
        (["--dataset-from", "dataset://a/v0", "--dataset-start-fresh"], "contradict"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    code, _, stderr = _run(src, out, *args)
    assert code == 2
    assert expected in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_outputs_inside_the_source_are_refused(tmp_path: Path) -> None:
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    code, _, stderr = _run(src, src / "out")
    assert code == 2
    assert "inside the source" in stderr
    assert "--outputs" in stderr
    assert not (src / "out").exists()


def test_missing_source_and_broken_job_file_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = _run(tmp_path / "nope", out)
    assert code == 2
    assert "nope" in stderr
    assert "does not exist" in stderr
    bad_job = tmp_path / "bad_job.py"
    bad_job.write_text("import mountproc\njob = mountproc.Job(name='x'\n")
    proc = run_cli("run", bad_job, "--source", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "SyntaxError" in proc.stderr
    assert "line" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.mount
def test_read_write_mount_is_refused_before_any_work(tmp_path: Path, bind_mount) -> None:  # type: ignore[no-untyped-def]
    from mountproc._demo_data import make_demo_tree

    data = tmp_path / "data"
    make_demo_tree(data, count=12)
    rw = bind_mount(data, tmp_path / "mnt rw", readonly=False)
    out = tmp_path / "out"
    code, _, stderr = _run(rw, out)
    assert code == 2
    assert "read-write" in stderr
    assert str(rw) in stderr
    assert not out.exists()
    ro = bind_mount(data, tmp_path / "mnt ro", readonly=True)
    code, _, stderr = _run(ro, out, "--strict-mounts")
    assert code == 0, stderr
    assert len(list(out.glob("*.tar"))) == 1


def test_a_failing_setup_stops_the_run_with_one_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.txt").write_text(str(i))
    job = tmp_path / "setup_fails.py"
    job.write_text(
        "from mountproc import Job\n"
        "job = Job(name='setup-fails')\n"
        "@job.setup\n"
        "def load(params):\n"
        "    raise RuntimeError('model weights missing')\n"
        "@job.transform\n"
        "def t(src, ctx):\n"
        "    return {'txt': b''}\n"
    )
    proc = run_cli("run", job, "--source", src, "--outputs", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "setup failed" in proc.stderr
    assert "RuntimeError: model weights missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_reports_mount_settings_and_parameters(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    proc = run_cli("check", RESIZE_JOB, "--source", src, "--size=64", "--test-mode", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "preflight ok" in proc.stdout
    assert re.search(r"--test-mode += True", proc.stdout)
    assert re.search(r"--size += 64", proc.stdout)
    assert re.search(r"(?m)^scratch +.*\n +free +\d", proc.stdout)
    assert not (tmp_path / "outputs").exists()


def test_empty_source_is_refused_unless_allowed(tmp_path: Path) -> None:
    """An empty source (a mount that was never populated) fails fast; --allow-empty runs."""
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    proc = run_cli("run", RESIZE_JOB, "--source", src, "--outputs", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"source {src} is empty" in proc.stderr
    assert "--allow-empty" in proc.stderr
    assert not out.exists()
    (src / "notes.txt").write_text("not an image")
    proc = run_cli("run", RESIZE_JOB, "--source", src, "--outputs", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no files to process" in proc.stderr
    assert not out.exists()
    proc = run_cli(
        "run", RESIZE_JOB, "--source", src, "--outputs", out, "--allow-empty", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(out)[0]["status"] == "excluded"


def test_a_plain_directory_is_refused_under_strict_mounts(tmp_path: Path) -> None:
    """Under --strict-mounts a source that is no mount (a mount that failed) is an error."""
    from mountproc._demo_data import make_demo_tree

    src = tmp_path / "src"
    make_demo_tree(src, count=12)
    out = tmp_path / "out"
    code, _, stderr = _run(src, out, "--strict-mounts")
    assert code == 2
    assert f"source {src} is not a mount point" in stderr
    assert "--no-strict-mounts" in stderr
    assert not out.exists()
