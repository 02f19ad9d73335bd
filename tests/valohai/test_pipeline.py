"""``mountproc yaml --pipeline``: the preprocessing step into a training step (the user's, or a
stub), linted by valohai-yaml; and the training side of docs/valohai.md run on real outputs."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import valohai_yaml
import yaml
from helpers import REPO, RESIZE_JOB, run_cli
from valohai_yaml.lint import lint_file

from mountproc._demo_data import make_demo_tree

USERS_TRAIN = {
    "name": "train",
    "image": "pytorch/pytorch:2.5.0-cuda12.4-cudnn9-runtime",
    "command": ["python train.py {parameters}"],
    "inputs": [{"name": "pretrained", "default": "s3://models/resnet.pt"}, {"name": "dataset"}],
    "parameters": [{"name": "epochs", "type": "integer", "default": 10}],
}


def _yaml(cwd: Path, *args: str) -> Any:
    proc = run_cli("yaml", RESIZE_JOB, *args, cwd=cwd)
    return proc


def _lint(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    return [f"{m['type']}: {m['message']}" for m in lint_file(str(path)).messages]


def _repo(tmp_path: Path, users: list[dict[str, Any]] | None) -> Path:
    """A repository (a project that depends on mountproc), with the user's valohai.yaml."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["mountproc"]\n')
    if users is not None:
        (root / "valohai.yaml").write_text(yaml.safe_dump(users))
    return root


def test_a_stub_training_step_and_the_pipeline_lint(tmp_path: Path) -> None:
    proc = _yaml(_repo(tmp_path, None), "--pipeline", "train")
    assert proc.returncode == 0, proc.stderr
    assert _lint(proc.stdout, tmp_path) == []
    config = valohai_yaml.parse(proc.stdout)
    (pipeline,) = config.pipelines.values()
    assert [n.serialize()["step"] for n in pipeline.nodes] == ["resize-images", "train"]
    edges = sorted((e.source, e.target) for e in pipeline.edges)
    assert edges == [
        ("preprocess.output.resize-images-*.tar", "train.input.shards"),
        ("preprocess.output.resize-images-wids-index.json", "train.input.shards"),
    ]
    assert "shards" in config.steps["train"].inputs


def test_the_users_training_step_is_copied_and_fed_the_named_input(tmp_path: Path) -> None:
    root = _repo(tmp_path, [{"step": USERS_TRAIN}])
    proc = _yaml(root, "--pipeline", "train:dataset")
    assert proc.returncode == 0, proc.stderr
    assert _lint(proc.stdout, tmp_path) == []
    printed = yaml.safe_load(proc.stdout)
    assert {"step": USERS_TRAIN} in printed  # as the user wrote it
    (pipeline,) = valohai_yaml.parse(proc.stdout).pipelines.values()
    assert {e.target for e in pipeline.edges} == {"train.input.dataset"}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("train", r"which input of the step .* takes the tars\? \(it has pretrained, dataset\)"),
        ("train:weights", r"step 'train' in .* has no input 'weights'"),
        ("train:a:b", r"expected TRAIN_STEP or TRAIN_STEP:INPUT"),
    ],
)
def test_a_pipeline_that_cannot_work_is_one_clear_line(
    tmp_path: Path, spec: str, says: str
) -> None:
    proc = _yaml(_repo(tmp_path, [{"step": USERS_TRAIN}]), "--pipeline", spec)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(says, last), last
    assert "Traceback" not in proc.stderr


def _training_snippet() -> str:
    """The training side's Python in docs/valohai.md."""
    text = (REPO / "docs" / "valohai.md").read_text()
    section = text.split("## Into training", 1)[1].split("\n## ", 1)[0]
    return textwrap.dedent(section.split("```python\n", 1)[1].split("```", 1)[0])


@pytest.mark.cluster
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # webdataset's
@pytest.mark.filterwarnings("ignore:String specifications for transformations:UserWarning")
def test_the_documented_training_code_reads_what_the_edges_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch", reason="wids imports torch (.ci/run installs torch==2.13.0)")
    make_demo_tree(tmp_path / "src", count=12)
    out = tmp_path / "out"
    args = ("--source", tmp_path / "src", "--outputs", out, "--shard-max-files", "5")
    assert run_cli("run", RESIZE_JOB, *args, cwd=tmp_path).returncode == 0
    shards = tmp_path / "inputs" / "shards"  # what the edges bring, side by side
    shards.mkdir(parents=True)
    for path in [*out.glob("resize-images-*.tar"), out / "resize-images-wids-index.json"]:
        shutil.copy(path, shards)
    code = _training_snippet().replace("/valohai/inputs/shards", str(shards))
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/valohai.md", "exec"), scope)
    assert (tmp_path / "src" / scope["record"]["path"]).is_file()
    assert scope["image"].size[0] <= 224
    count, key = capsys.readouterr().out.split()[-2:]
    assert (int(count), key) == (12, scope["sample"]["__key__"])
