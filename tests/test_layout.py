"""The package's layout holds: worker-side code imports no Dask, only ``_cluster`` imports
``distributed`` and ``dask_jobqueue``, stages never import the runner or the CLI, modules and
functions stay short, and ``import mountproc`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, clean_env
from helpers.pinned import JOB, make_tree

PACKAGE = REPO / "mountproc"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
DASK = ("dask", "distributed", "dask_jobqueue")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _outside(prefixes: tuple[str, ...]) -> list[Path]:
    return [p for p in _modules() if not _name(p).startswith(prefixes)]


def test_only_the_cluster_package_imports_dask() -> None:
    offenders = {
        _name(path): sorted(m for m in _imports(path) if m.split(".")[0] in DASK)
        for path in _outside(("mountproc._cluster",))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_stages_never_import_the_runner_the_api_or_the_cli() -> None:
    upward = ("mountproc._runner", "mountproc._api", "mountproc._cli")
    allowed = ("mountproc._cli", "mountproc._api", "mountproc.__init__", "mountproc.__main__")
    offenders = {}
    for path in _modules():
        name = _name(path)
        if name == "mountproc" or name.startswith(allowed):
            continue
        bad = sorted(m for m in _imports(path) if m.startswith(upward))
        if bad:
            offenders[name] = bad
    assert offenders == {}


def test_modules_and_functions_stay_short() -> None:
    long_modules, long_functions = [], []
    for path in _modules():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(_name(path))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{_name(path)}.{node.name}")
    assert (long_modules, long_functions) == ([], [])


def _loaded_after(code: str, cwd: Path, modules: bool = False) -> set[str]:
    """The top-level packages (or every module) a fresh interpreter has loaded after ``code``."""
    names = "sys.modules" if modules else "{m.split('.')[0] for m in sys.modules}"
    probe = code + f"\nimport sys; print(' '.join(sorted({names})))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_a_shard_runs_without_dask(tmp_path: Path) -> None:
    """What runs on a worker (``_shard``) runs a real shard in a process without Dask."""
    make_tree(tmp_path / "src")
    (tmp_path / "job.py").write_text(JOB)
    code = f"""
from pathlib import Path
from mountproc._jobfile import read_job_file
from mountproc._records import FileEntry, ShardSpec
from mountproc._shard.worker import run_shard
src = Path({str(tmp_path / "src")!r})
entries = tuple(
    FileEntry(p.relative_to(src).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
    for p in sorted(src.rglob("*.txt"))
)
ref = read_job_file({str(tmp_path / "job.py")!r})
spec = ShardSpec(0, ref, "{{}}", str(src), {str(tmp_path)!r}, "t.tar", entries)
result = run_shard(spec)
assert (result.files_ok, result.files_failed) == (5, 1), result
"""
    loaded = _loaded_after(code, tmp_path)
    assert "mountproc" in loaded
    assert not loaded & {*DASK, "pyarrow", "pandas"}  # what every worker process would import


HELP = """
from click.testing import CliRunner
from mountproc._cli import main
result = CliRunner().invoke(main, {args!r})
assert result.exit_code == 0 and "Usage: main" in result.output, result.output
"""


@pytest.mark.parametrize(
    "code",
    [
        "import mountproc",
        "import mountproc._cli",
        HELP.format(args=["--help"]),
        HELP.format(args=["run", "--help"]),
    ],
    ids=["package", "cli", "help", "run-help"],
)
def test_importing_the_package_or_the_cli_loads_no_dask(code: str, tmp_path: Path) -> None:
    """``mountproc --help`` and ``mountproc run --help`` answer in a quarter of a second: the
    CLI (its options made from the settings) loads no Dask, pandas or pyarrow."""
    assert not _loaded_after(code, tmp_path) & {*DASK, "pandas", "pyarrow"}


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    """``mountproc run`` does not import what the other commands need (YAML, the Valohai step
    and pipeline, the checks): each command's module is imported when it is asked for."""
    loaded = _loaded_after(HELP.format(args=["run", "--help"]), tmp_path, modules=True)
    assert "mountproc._cli.run" in loaded
    others = {"mountproc._cli.yaml_step", "mountproc._cli.check", "mountproc._cli.verify"}
    assert not loaded & {*others, "yaml", "mountproc._valohai.pipeline"}


@pytest.mark.parametrize("code", ["import mountproc", HELP.format(args=["--help"])])
def test_the_package_and_the_command_list_load_no_pydantic(code: str, tmp_path: Path) -> None:
    """``mountproc --help`` lists the commands without importing any (``main.COMMANDS``), and
    ``import mountproc`` imports ``Job`` and the rest when first used: neither loads pydantic,
    which alone costs more than the interpreter's start."""
    loaded = _loaded_after(code, tmp_path, modules=True)
    assert not {m.split(".")[0] for m in loaded} & {"pydantic", "pydantic_settings"}
    assert not {m for m in loaded if m.startswith("mountproc._cli.")} - {"mountproc._cli.main"}


def test_run_help_needs_pydantic_but_not_pydantic_settings(tmp_path: Path) -> None:
    """``run --help`` makes its options from the settings' declaration (pydantic alone);
    reading them from the environment and Valohai (pydantic-settings) waits for a run."""
    loaded = _loaded_after(HELP.format(args=["run", "--help"]), tmp_path)
    assert "pydantic" in loaded
    assert "pydantic_settings" not in loaded


def test_run_help_without_a_job_file_builds_no_model(tmp_path: Path) -> None:
    """The bare ``run --help`` loads no job (the job-file loader and cloudpickle stay out) and
    builds no pydantic model: a model's validator loads pydantic's plugins through
    importlib.metadata, about 15 ms of a 250 ms budget."""
    loaded = _loaded_after(HELP.format(args=["run", "--help"]), tmp_path, modules=True)
    assert not loaded & {"mountproc._jobfile", "cloudpickle", "pydantic.plugin._loader"}
