"""Where Valohai puts things: outputs, config, parameters; sane local fallbacks elsewhere."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mountproc._errors import SettingsError

VALOHAI_ROOT = Path("/valohai")


def on_valohai(environ: Mapping[str, str]) -> bool:
    """True inside a Valohai execution (``VH_JOB_ID`` is set only there)."""
    return bool(environ.get("VH_JOB_ID"))


def default_outputs(environ: Mapping[str, str]) -> Path:
    """``VH_OUTPUTS_DIR``, else ``/valohai/outputs`` on Valohai, else ``./outputs``."""
    if environ.get("VH_OUTPUTS_DIR"):
        return Path(environ["VH_OUTPUTS_DIR"])
    if on_valohai(environ):
        return VALOHAI_ROOT / "outputs"
    return Path("outputs")


def default_scratch(outputs: Path) -> Path:
    """Scratch beside the outputs directory, so publishing a tar is a same-disk rename."""
    outputs = outputs.absolute()
    return outputs.parent / f".mountproc-scratch-{outputs.name}"


def config_dir(environ: Mapping[str, str]) -> Path:
    """``VH_CONFIG_DIR``, else ``/valohai/config``."""
    return Path(environ.get("VH_CONFIG_DIR") or VALOHAI_ROOT / "config")


def read_parameters(environ: Mapping[str, str]) -> dict[str, Any]:
    """The flat ``{name: value}`` of ``parameters.json``, or ``{}`` when there is none."""
    path = config_dir(environ) / "parameters.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read Valohai parameters {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"Valohai parameters {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"Valohai parameters {path} must hold a JSON object")
    return data
