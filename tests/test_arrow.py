"""Arrow arrays made without pandas are the very arrays ``pa.array`` makes, and a driver that
lists, shards and writes results and the manifest never imports pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from helpers import RESIZE_JOB, clean_env

from mountproc import _arrow as arrow
from mountproc._cli.main import ARROW_POOL
from mountproc._demo_data import make_demo_tree

CASES: list[tuple[list[Any], pa.DataType]] = [
    (["a", "é", None, ""], pa.string()),
    ([b"x", b"", None, b"\xff"], pa.binary()),
    ([1, None, 2**40, 0, -3], pa.int64()),
    ([0, 7, None], pa.int32()),
    ([True, None, False, True, False, False, False, False, True], pa.bool_()),
    ([["a", "b"], [], None, ["c"]], pa.list_(pa.string())),
    ([["a", "b"], ["c", "d"]], pa.list_(pa.string())),
    ([None, None], pa.string()),
    ([None, None], pa.int64()),
    ([None], pa.list_(pa.string())),
    (["ascii", "x"], pa.string()),
    ([], pa.string()),
    ([], pa.list_(pa.string())),
]


@pytest.mark.parametrize(("values", "kind"), CASES, ids=lambda c: str(c)[:40])
def test_arrays_equal_those_of_pa_array(values: list[Any], kind: pa.DataType) -> None:
    made = arrow.array(values, kind)
    made.validate(full=True)
    expected = pa.array(values, kind)
    assert made.type == expected.type
    assert made.null_count == expected.null_count
    assert made.equals(expected)


def test_text_that_is_not_utf8_raises_as_pa_array_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        arrow.array(["ok", "bad\udcff"], pa.string())


def test_scalars_counting_and_tables() -> None:
    assert arrow.scalar("failed", pa.string()).equals(pa.scalar("failed", pa.string()))
    assert arrow.counting(4).equals(pa.array(range(4), pa.int64()))
    schema = pa.schema([pa.field("a", pa.string()), pa.field("n", pa.int64())])
    made = arrow.table({"n": [1, None], "a": ["x", "y"]}, schema)
    assert made.equals(pa.table({"a": ["x", "y"], "n": [1, None]}, schema=schema))


DRIVER = """
import sys
from pathlib import Path
from mountproc._listing.listing import Patterns, write_listing
from mountproc._listing.sharding import ShardBounds, write_plan
from mountproc._outputs.failures import failure_groups
from mountproc._outputs.layout import results_path
from mountproc._outputs.manifest import write_manifest
from mountproc._outputs.metadata import write_results
from mountproc._records import FileResult, Status
src, work = Path(sys.argv[1]), Path(sys.argv[2])
write_listing(src, Patterns(["*"], []), work / "listing.parquet")
plan = write_plan(work / "listing.parquet", work / "plan.parquet", ShardBounds(1000, 2**30))
results = [FileResult("a.txt", Status.FAILED, "ValueError: bad", sha256="0" * 64)]
write_results(results_path(work, 0), results)
write_manifest(work / "plan.parquet", work, {0: "t-000000.tar"}, work / "manifest.parquet")
failure_groups(work / "manifest.parquet")
assert plan.files > 0
print("pandas" in sys.modules)
"""


def test_the_driver_writes_its_parquet_files_without_pandas(tmp_path: Path) -> None:
    """Listing, plan, a shard's results, the manifest and its failures: pandas is never
    imported (it would cost every run 0.15 s of CPU and 40 MB)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    (tmp_path / "work").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "src"), str(tmp_path / "work")],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]


POOL_AT_EXIT = """
import atexit, importlib, runpy, sys
arrow = lambda: importlib.import_module("pyarrow")  # imported by the command, not before it
atexit.register(lambda: print("pool:", arrow().default_memory_pool().backend_name))
sys.argv = ["mountproc", *sys.argv[1:]]
runpy.run_module("mountproc", run_name="__main__")
"""


@pytest.mark.skipif(
    sys.platform != "linux" or "jemalloc" not in pa.supported_memory_backends(),
    reason="mountproc chooses jemalloc on Linux, where pyarrow has it",
)
@pytest.mark.parametrize(("chosen", "expected"), [(None, "jemalloc"), ("system", "system")])
def test_the_driver_lists_on_jemalloc_unless_the_user_chose_a_pool(
    tmp_path: Path, chosen: str | None, expected: str
) -> None:
    """``mountproc plan`` (the driver's listing and sharding) ends on jemalloc, or on the pool
    that ``ARROW_DEFAULT_MEMORY_POOL`` names."""
    make_demo_tree(tmp_path / "src", count=12)
    env = clean_env()
    env.pop(ARROW_POOL, None)
    if chosen:
        env[ARROW_POOL] = chosen
    cmd = [sys.executable, "-c", POOL_AT_EXIT, "plan", str(RESIZE_JOB), "--source", "src"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"pool: {expected}"
