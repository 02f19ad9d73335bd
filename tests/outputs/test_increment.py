"""Increments: ``--since`` processes only what changed and makes the new dataset version from
the previous one; ``--retry-failed`` only what failed; ``--compare sha256`` by content. The
final version, resolved as Valohai resolves versions, holds exactly the samples of one fresh run
over the final tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from helpers import read_manifest, read_metadata, run_cli

import mountproc
from mountproc import UsageError
from mountproc._outputs.verify import conclusion, verify_outputs

JOB = """
from mountproc import Job

job = Job(name="grow", include=["*.txt"])

@job.transform
def upper(src, ctx):
    with open({log!r}, "a") as f:
        f.write(src.relpath + "\\n")
    data = src.read_bytes()
    if data.startswith(b"bad") and {strict!r}:
        raise ValueError("bad file")
    return {{"txt": data.upper()}}
"""
MTIME_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """One cluster for the module's many small runs."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")  # type: ignore[no-untyped-call]
    with cluster, Client(cluster) as c:  # type: ignore[no-untyped-call]
        yield c


class World:
    """A source tree that changes from day to day, the job, and the runs made over it."""

    def __init__(self, root: Path, client: Client, strict: bool = True) -> None:
        self.root, self.client = root, client
        self.src, self.log = root / "src", root / "transformed.log"
        self.job = root / "grow.py"
        self.fix(strict)
        self.tick = 0

    def fix(self, strict: bool) -> None:
        """Write the job file: ``strict`` fails files whose content starts with ``bad``."""
        self.job.write_text(JOB.format(log=str(self.log), strict=strict))

    def write(self, rel: str, data: bytes, mtime_ns: int | None = None) -> None:
        path = self.src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.tick += 1
        stamp = mtime_ns if mtime_ns is not None else MTIME_NS + self.tick * 10**9
        os.utime(path, ns=(stamp, stamp))

    def files(self) -> set[str]:
        return {str(p.relative_to(self.src)) for p in self.src.rglob("*.txt")}

    def run(self, out: str, **settings: Any) -> tuple[dict[str, Any], list[str]]:
        """A run into ``root/out``; its summary and the files its transform saw."""
        self.log.unlink(missing_ok=True)
        report = mountproc.run(
            str(self.job),
            client=self.client,
            source=self.src,
            outputs=self.root / out,
            scratch=self.root / f"scratch-{out}",
            shard_max_files=3,
            keep_going=True,
            **settings,
        )
        seen = self.log.read_text().splitlines() if self.log.exists() else []
        return report.summary, seen


def versions_of(outputs: list[Path]) -> dict[str, dict[str, Path]]:
    """Dataset versions as Valohai makes them from each execution's metadata lines: a version's
    files are its base version's (``from``), minus ``exclude``, plus the lines naming it."""
    versions: dict[str, dict[str, Path]] = {}
    for out in outputs:
        for line in read_metadata(out):
            for entry in line["metadata"].get("valohai.dataset-versions", []):
                if entry["uri"] not in versions:
                    base = dict(versions[entry["from"]]) if "from" in entry else {}
                    for name in entry.get("exclude", []):
                        base.pop(name)  # a name the base does not hold is a mistake
                    versions[entry["uri"]] = base
                versions[entry["uri"]][line["file"]] = out / line["file"]
    return versions


def samples(files: dict[str, Path]) -> set[tuple[str, bytes]]:
    """Every tar member of a version, as (name, bytes); no name twice."""
    found: list[tuple[str, bytes]] = []
    for name, path in files.items():
        if name.endswith(".tar"):
            with tarfile.open(path) as tf:
                for member in tf.getmembers():
                    data = tf.extractfile(member)
                    assert data is not None
                    found.append((member.name, data.read()))
    assert len(found) == len(set(found)), "a sample is in the version twice"
    return set(found)


def must_process(previous: Path, job: str, changed: set[str], deleted: set[str]) -> set[str]:
    """The files an increment has to transform: the changed and added ones, and every file of
    a previous tar that held a changed or deleted file."""
    rows = read_manifest(previous, job)
    hit = {r["tar"] for r in rows if r["path"] in changed | deleted and r["tar"]}
    return changed | {r["path"] for r in rows if r["tar"] in hit and r["path"] not in deleted}


def verified(out: Path) -> str:
    return conclusion(out, list(verify_outputs(out)))


@pytest.mark.cluster
def test_three_increments_give_the_samples_of_a_fresh_run(tmp_path: Path, client: Client) -> None:
    w = World(tmp_path, client)
    for folder, count in (("a", 5), ("b", 5), ("c", 4)):
        for i in range(count):
            w.write(f"{folder}/{i}.txt", f"{folder} file {i}\n".encode())
    summary, seen = w.run("day1", dataset="dataset://grow/v1")
    assert sorted(seen) == sorted(w.files())
    days = [tmp_path / "day1"]

    # day 2: a file added, one modified, one deleted
    w.write("a/new.txt", b"new on day two\n")
    w.write("b/2.txt", b"b file 2, edited\n")
    (w.src / "c/1.txt").unlink()
    expected = must_process(days[-1], "grow", {"a/new.txt", "b/2.txt"}, {"c/1.txt"})
    summary, seen = w.run(
        "day2",
        since=days[-1],
        dataset="dataset://grow/v2",
        alias="grow-latest",
        tags=("daily", "clinic-a"),
    )
    aliased = {
        m["file"] for m in read_metadata(tmp_path / "day2") if "valohai.alias" in m["metadata"]
    }
    assert aliased == {"grow-manifest.parquet"}  # datum://grow-latest: tomorrow's --since
    tagged = [m["metadata"]["valohai.tags"] for m in read_metadata(tmp_path / "day2")]
    assert tagged == [["daily", "clinic-a"]] * len(tagged)
    assert sorted(seen) == sorted(expected)  # each file once, only those
    assert len(seen) < len(w.files())
    inc = summary["increment"]
    assert (inc["added"], inc["changed"], inc["deleted"], inc["number"]) == (1, 1, 1, 2)
    assert summary["dataset_from"] == "dataset://grow/v1"
    days.append(tmp_path / "day2")

    # day 3: a whole folder removed, a folder added
    gone = {f for f in w.files() if f.startswith("a/")}
    shutil.rmtree(w.src / "a")
    for i in range(4):
        w.write(f"d/{i}.txt", f"d file {i}\n".encode())
    added = {f"d/{i}.txt" for i in range(4)}
    expected = must_process(days[-1], "grow", added, gone)
    summary, seen = w.run(
        "day3", since=days[-1] / "grow-manifest.parquet", dataset="dataset://grow/v3"
    )
    assert sorted(seen) == sorted(expected)
    assert summary["increment"]["deleted"] == len(gone)
    assert summary["increment"]["removed"]  # tars whose files were all deleted
    days.append(tmp_path / "day3")

    # day 4: one more file, and another edited
    w.write("e/0.txt", b"e file 0\n")
    w.write("d/1.txt", b"d file 1, edited\n")
    expected = must_process(days[-1], "grow", {"e/0.txt", "d/1.txt"}, set())
    summary, seen = w.run("day4", since=days[-1], dataset="dataset://grow/v4")
    assert sorted(seen) == sorted(expected)
    days.append(tmp_path / "day4")

    # the last version, resolved as Valohai resolves it, against one fresh full run
    w.run("full", dataset="dataset://grow/full")
    versions = versions_of([*days, tmp_path / "full"])
    assert samples(versions["dataset://grow/v4"]) == samples(versions["dataset://grow/full"])
    # the new manifest describes the whole version: one ok row per file of the final tree
    rows = read_manifest(days[-1], "grow")
    assert {r["path"] for r in rows if r["status"] == "ok"} == w.files()
    kept = {r["tar"] for r in rows} - {p.name for p in days[-1].glob("*.tar")}
    assert kept
    assert kept <= set(versions["dataset://grow/v4"])
    for day in days:  # every increment's own tars verify; the kept ones are not there
        assert verified(day).endswith("all ok")
    names = [set(versions[f"dataset://grow/v{i}"]) for i in range(1, 5)]
    new_tars = [
        {n for n in v if n.endswith(".tar")} - set().union(*names[:i]) for i, v in enumerate(names)
    ]
    assert all(new_tars[1:])  # each increment published tars of its own, never a base name


@pytest.mark.cluster
def test_retry_failed_turns_exactly_the_failed_files_into_samples(
    tmp_path: Path, client: Client
) -> None:
    w = World(tmp_path, client)
    for i in range(7):
        w.write(f"x/{i}.txt", b"bad content\n" if i in (1, 5) else f"fine {i}\n".encode())
    summary, _ = w.run("first", dataset="dataset://grow/v1", max_failures="50%")
    assert summary["files_failed"] == 2
    w.fix(strict=False)  # the transform fixed
    summary, seen = w.run("retry", retry_failed=tmp_path / "first", dataset="dataset://grow/v2")
    assert sorted(seen) == ["x/1.txt", "x/5.txt"]
    assert summary["increment"]["retried"] == 2
    assert summary["files_failed"] == 0
    w.run("full", dataset="dataset://grow/full")
    versions = versions_of([tmp_path / "first", tmp_path / "retry", tmp_path / "full"])
    assert samples(versions["dataset://grow/v2"]) == samples(versions["dataset://grow/full"])
    rows = read_manifest(tmp_path / "retry", "grow")
    assert [r["status"] for r in rows] == ["ok"] * 7


@pytest.mark.cluster
def test_compare_sha256_tells_content_from_mtimes(tmp_path: Path, client: Client) -> None:
    w = World(tmp_path, client)
    for i in range(6):  # two tars: y/0-2 and y/3-5
        w.write(f"y/{i}.txt", f"same {i}\n".encode(), mtime_ns=MTIME_NS)
    w.run("first")
    w.write("y/0.txt", b"same 0\n")  # copied again: the bytes are the same, the mtime is not
    w.write("y/4.txt", b"SAME 4\n", mtime_ns=MTIME_NS)  # same size and mtime, new bytes
    by_mtime, seen_mtime = w.run("by-mtime", since=tmp_path / "first")
    by_content, seen_content = w.run("by-content", since=tmp_path / "first", compare="sha256")
    assert by_mtime["increment"]["changed"] == by_content["increment"]["changed"] == 1
    assert sorted(seen_mtime) == ["y/0.txt", "y/1.txt", "y/2.txt"]
    assert sorted(seen_content) == ["y/3.txt", "y/4.txt", "y/5.txt"]


@pytest.mark.cluster
def test_an_empty_previous_directory_means_a_full_run(tmp_path: Path, client: Client) -> None:
    w = World(tmp_path, client)
    w.write("z/0.txt", b"zero\n")
    (tmp_path / "no-manifest-yet").mkdir()
    summary, seen = w.run("out", since=tmp_path / "no-manifest-yet")
    assert seen == ["z/0.txt"]
    assert summary["increment"] is None
    summary, seen = w.run("test", since=tmp_path / "out", test_mode=True)
    assert seen == ["z/0.txt"]  # a smoke test of the same step: --since is ignored, said once
    assert summary["increment"] is None
    assert summary["test_mode"]


@pytest.mark.cluster
def test_on_valohai_an_input_left_out_means_a_full_run(
    tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optional input that was not given may not exist at all: on Valohai that is no
    earlier run (elsewhere a missing PREVIOUS is a mistake, below)."""
    monkeypatch.setenv("VH_JOB_ID", "1234")
    w = World(tmp_path, client)
    w.write("z/0.txt", b"zero\n")
    summary, seen = w.run(
        "out", since=tmp_path / "inputs" / "previous-manifest", strict_mounts=False
    )
    assert seen == ["z/0.txt"]
    assert summary["increment"] is None


def test_bad_previous_runs_are_one_clear_line(tmp_path: Path) -> None:
    w = World(tmp_path, None)  # type: ignore[arg-type]  # nothing runs
    w.write("z/0.txt", b"zero\n")
    common: dict[str, Any] = {
        "source": w.src,
        "outputs": tmp_path / "out",
        "scratch": tmp_path / "s",
    }
    with pytest.raises(UsageError, match=r"earlier run not found: .*missing"):
        mountproc.run(str(w.job), since=tmp_path / "missing", **common)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run\n")
    with pytest.raises(UsageError, match=r"holds no grow-manifest\.parquet"):
        mountproc.run(str(w.job), since=tmp_path / "other", **common)
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@pytest.mark.cluster
def test_the_base_version_is_never_guessed(tmp_path: Path, client: Client) -> None:
    w = World(tmp_path, client)
    w.write("z/0.txt", b"zero\n")
    w.run("first")  # registered no dataset version
    w.write("z/1.txt", b"one\n")
    with pytest.raises(UsageError, match=r"registered no dataset version: pass --dataset-from"):
        w.run("second", since=tmp_path / "first", dataset="dataset://grow/v2")
    assert not (tmp_path / "second").exists()
    summary, seen = w.run(
        "second", since=tmp_path / "first", dataset="dataset://grow/v2",
        dataset_from="dataset://grow/v1",
    )  # fmt: skip
    assert seen == ["z/1.txt"]
    assert summary["dataset_from"] == "dataset://grow/v1"
    (entry,) = {
        json.dumps(m["metadata"]["valohai.dataset-versions"])
        for m in read_metadata(tmp_path / "second")
    }
    assert json.loads(entry) == [
        {"uri": "dataset://grow/v2", "from": "dataset://grow/v1", "packaging": True}
    ]


@pytest.mark.cluster
def test_an_increment_never_writes_over_its_earlier_run(tmp_path: Path, client: Client) -> None:
    w = World(tmp_path, client)
    w.write("z/0.txt", b"zero\n")
    w.run("out")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.raises(UsageError, match="this run's own outputs directory"):
        w.run("out", since=tmp_path / "out", fresh=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before


@pytest.mark.cluster
def test_plan_since_says_what_changed_and_runs_nothing(tmp_path: Path, client: Client) -> None:
    w = World(tmp_path, client)
    for i in range(6):
        w.write(f"p/{i}.txt", f"plan {i}\n".encode())
    w.run("first")
    w.write("p/9.txt", b"added\n")
    w.write("p/1.txt", b"plan 1, edited\n")
    (w.src / "p/4.txt").unlink()
    proc = run_cli(
        "plan", w.job, "--source", w.src, "--since", tmp_path / "first", "--shard-max-files", "3",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(re.search(r"^since .*: 1 added, 1 changed, 1 deleted$", line) for line in lines)
    assert any(
        re.search(r"^replaced +2 tars: grow-000000\.tar, grow-000001\.tar$", line) for line in lines
    ), lines
    assert any(re.search(r"^carried +0 files", line) for line in lines)
    assert not (tmp_path / "outputs").exists()
