"""``mountproc yaml --pipeline TRAIN_STEP[:INPUT]``: a Valohai pipeline from the preprocessing
step into a training step, its edges carrying the tars and the wids index into the training
step's input; the training step is the user's own (from ``valohai.yaml``), or a stub."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mountproc._errors import UsageError

DEFAULT_INPUT = "shards"
PREPROCESS_NODE, TRAIN_NODE = "preprocess", "train"
STUB_COMMAND = (
    "python -c \"import glob; print(sorted(glob.glob('/valohai/inputs/{input}/*.tar')))\""
    "  # replace with your training command"
)


def pipeline_config(
    step: dict[str, Any], job: str, spec: str, existing: Path | None
) -> list[dict[str, Any]]:
    """The training step (the user's, copied from ``existing``, or a stub) and the pipeline
    that feeds it ``step``'s tars and wids index."""
    name, _, wanted = spec.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or (wanted and ":" in wanted):
        raise UsageError(f"--pipeline {spec}: expected TRAIN_STEP or TRAIN_STEP:INPUT")
    train = _users_step(existing, name) if existing is not None else None
    if train is None:
        train = _stub(name, wanted or DEFAULT_INPUT)
    given = wanted or _only_input(train, existing)
    if given not in [i.get("name") for i in train.get("inputs", [])]:
        raise UsageError(
            f"--pipeline {spec}: step {name!r} in {existing} has no input {given!r}: name one "
            "of its inputs (TRAIN_STEP:INPUT) or add it to the step"
        )
    pipeline = {
        "name": f"{step['name']}-to-{name}",
        "nodes": [
            {"name": PREPROCESS_NODE, "type": "execution", "step": step["name"]},
            {"name": TRAIN_NODE, "type": "execution", "step": name},
        ],
        "edges": [
            [f"{PREPROCESS_NODE}.output.{job}-*.tar", f"{TRAIN_NODE}.input.{given}"],
            [f"{PREPROCESS_NODE}.output.{job}-wids-index.json", f"{TRAIN_NODE}.input.{given}"],
        ],
    }
    return [{"step": train}, {"pipeline": pipeline}]


def _users_step(path: Path, name: str) -> dict[str, Any] | None:
    """The step ``name`` of the user's ``valohai.yaml``, as written there, if it has one."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    for item in config if isinstance(config, list) else []:
        step = item.get("step") if isinstance(item, dict) else None
        if isinstance(step, dict) and step.get("name") == name:
            return step
    return None


def _stub(name: str, input_name: str) -> dict[str, Any]:
    """A training step to replace: it declares the input and lists the tars it receives."""
    return {
        "name": name,
        "image": "python:3.11",
        "command": ["pip install webdataset", STUB_COMMAND.format(input=input_name)],
        "inputs": [{"name": input_name}],
    }


def _only_input(step: dict[str, Any], where: Path | None) -> str:
    """The input of a step that has exactly one (else the user must name it)."""
    inputs = [i.get("name") for i in step.get("inputs", [])]
    if len(inputs) != 1:
        names = ", ".join(str(i) for i in inputs) or "none"
        raise UsageError(
            f"--pipeline {step.get('name')}: which input of the step in {where} takes the tars? "
            f"(it has {names}): give TRAIN_STEP:INPUT"
        )
    return str(inputs[0])
