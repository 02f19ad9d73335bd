"""``mountproc verify`` on real outputs of real runs, damaged the ways disks and people do."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import RESIZE_JOB, read_metadata, run_cli

from mountproc._demo_data import make_demo_tree

pytestmark = pytest.mark.cluster

TARS = [f"resize-images-{i:06d}.tar" for i in range(4)]
MANIFEST = "resize-images-manifest.parquet"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of one real run: 24 images in 4 tars (made once, copied per test)."""
    root = tmp_path_factory.mktemp("verify")
    make_demo_tree(root / "src", count=24)
    out = root / "out"
    proc = run_cli(
        "run", RESIZE_JOB, "--source", root / "src", "--outputs", out,
        "--scratch", root / "scratch", "--shard-max-files", "6", cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == TARS
    return out


@pytest.fixture
def outputs(published: Path, tmp_path: Path) -> Path:
    """A private copy of the published outputs (still read-only, as published)."""
    return Path(shutil.copytree(published, tmp_path / "out"))


def verify(out: Path) -> tuple[int, list[str], str]:
    """Run ``mountproc verify`` for real: exit code, stdout lines, stderr."""
    proc = run_cli("verify", out, cwd=out.parent)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def writable(path: Path) -> Path:
    """``path`` made writable by its owner (published files are 0444)."""
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


def assert_only_bad(lines: list[str], name: str, reason: str, others: list[str]) -> None:
    """``name`` is the one BAD line, its reason starting with ``reason``; ``others`` are ok."""
    bad = [line for line in lines if line.startswith("BAD ")]
    assert len(bad) == 1, lines
    assert bad[0].startswith(f"BAD {name}: {reason}"), lines
    for other in others:
        assert f"ok  {other}  12 members" in lines, lines


def test_good_outputs_verify(outputs: Path) -> None:
    code, lines, stderr = verify(outputs)
    assert code == 0, stderr
    assert lines == [f"ok  {name}  12 members" for name in TARS] + [
        f"verified 4 tars in {outputs}: all ok"
    ]
    assert stderr == ""


def test_truncated_tar(outputs: Path) -> None:
    tar = writable(outputs / TARS[1])
    size = tar.stat().st_size
    with tar.open("r+b") as f:
        f.truncate(size // 2)
    code, lines, stderr = verify(outputs)
    assert code == 1
    assert_only_bad(
        lines,
        TARS[1],
        f"truncated (tar ends early at byte {size // 2} of {size})",
        TARS[:1] + TARS[2:],
    )
    assert f"1 bad: {TARS[1]} (truncated)" in stderr
    assert "Traceback" not in stderr


def test_truncated_at_a_block_boundary_is_still_truncated(outputs: Path) -> None:
    # a cut between members leaves a tar that parses, with fewer members
    tar = writable(outputs / TARS[0])
    size = tar.stat().st_size
    with tar.open("r+b") as f:
        f.truncate(4608)  # the first member's header and data
    code, lines, _ = verify(outputs)
    assert code == 1
    assert_only_bad(lines, TARS[0], f"truncated (tar ends early at byte 4608 of {size})", TARS[1:])


def test_altered_tar(outputs: Path) -> None:
    tar = writable(outputs / TARS[2])
    with tar.open("r+b") as f:  # one byte of the first member's data: the tar still parses
        f.seek(512 + 100)
        byte = f.read(1)
        f.seek(512 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, lines, stderr = verify(outputs)
    assert code == 1
    assert_only_bad(lines, TARS[2], "altered (sha256 ", TARS[:2] + TARS[3:])
    assert "members differ" not in "\n".join(lines)
    assert f"1 bad: {TARS[2]} (altered)" in stderr


def test_deleted_tar(outputs: Path) -> None:
    (outputs / TARS[3]).unlink()
    code, lines, stderr = verify(outputs)
    assert code == 1
    assert_only_bad(lines, TARS[3], "missing", TARS[:3])
    assert f"1 bad: {TARS[3]} (missing)" in stderr


def test_unlisted_tar(outputs: Path) -> None:
    shutil.copyfile(outputs / TARS[0], outputs / "resize-images-copy.tar")
    code, lines, stderr = verify(outputs)
    assert code == 1
    assert_only_bad(lines, "resize-images-copy.tar", "unlisted", TARS)
    assert "verified 5 tars" in stderr


def test_tar_only_the_manifest_names(outputs: Path) -> None:
    # the tar and its metadata line are both gone: the manifest still names it
    (outputs / TARS[1]).unlink()
    meta = writable(outputs / "valohai.metadata.jsonl")
    lines = [json.dumps(m) for m in read_metadata(outputs) if m["file"] != TARS[1]]
    meta.write_text("".join(line + "\n" for line in lines))
    code, out_lines, _ = verify(outputs)
    assert code == 1
    assert_only_bad(out_lines, TARS[1], "missing (named by the manifest", TARS[:1] + TARS[2:])


def test_members_differ_from_the_manifest(outputs: Path) -> None:
    manifest = writable(outputs / MANIFEST)
    table = pq.read_table(manifest)
    rows = table.to_pylist()
    row = next(r for r in rows if r["tar"] == TARS[0])
    old = row["members"][0]
    row["members"] = ["renamed.jpg", *row["members"][1:]]
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), manifest)
    code, lines, _ = verify(outputs)
    assert code == 1
    assert_only_bad(lines, TARS[0], "members differ from the manifest: ", TARS[1:])
    bad = next(line for line in lines if line.startswith("BAD"))
    assert "1 not in the tar (first 'renamed.jpg')" in bad
    assert f"1 not in the manifest (first {old!r})" in bad


def test_missing_metadata_is_a_usage_error(outputs: Path) -> None:
    writable(outputs / "valohai.metadata.jsonl").unlink()
    code, lines, stderr = verify(outputs)
    assert code == 2
    assert lines == []
    assert stderr.splitlines() == [
        f"mountproc: error: no valohai.metadata.jsonl in {outputs}: not the outputs of a "
        "finished mountproc run"
    ]


def test_missing_manifest_is_a_usage_error(outputs: Path) -> None:
    writable(outputs / MANIFEST).unlink()
    code, lines, stderr = verify(outputs)
    assert code == 2
    assert lines == []
    assert len(stderr.splitlines()) == 1
    assert stderr.startswith(f"mountproc: error: the manifest {outputs / MANIFEST} is missing")


def test_no_such_directory(tmp_path: Path) -> None:
    code, lines, stderr = verify(tmp_path / "nowhere")
    assert code == 2
    assert lines == []
    assert stderr.splitlines() == [
        f"mountproc: error: outputs directory {tmp_path / 'nowhere'} does not exist"
    ]


def test_test_mode_outputs_verify(tmp_path: Path) -> None:
    make_demo_tree(tmp_path / "src", count=24)
    out = tmp_path / "out"
    proc = run_cli(
        "run", RESIZE_JOB, "--source", tmp_path / "src", "--outputs", out,
        "--scratch", tmp_path / "scratch", "--test-mode", "--test-size", "5",
        "--shard-max-files", "2", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = out / "test-mode"  # a self-contained outputs directory of its own
    assert not any("valohai.dataset-versions" in m["metadata"] for m in read_metadata(out))
    code, lines, stderr = verify(out)
    assert code == 0, stderr
    assert lines[-1] == f"verified 3 tars in {out}: all ok"
    assert [line.split()[0] for line in lines[:-1]] == ["ok", "ok", "ok"]
