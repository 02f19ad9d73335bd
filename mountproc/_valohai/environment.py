"""Where Valohai puts things: outputs, config, parameters; sane local fallbacks elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DistributedTask:
    """This execution's place in a Valohai distributed task (several machines, one run)."""

    member_id: str
    member_ids: tuple[str, ...]  # sorted as valohai-utils ranks them: the first is the primary
    primary_ip: str
    own_ip: str

    @property
    def is_primary(self) -> bool:
        """The primary runs the scheduler and the driver; the others run workers."""
        return self.member_id == self.member_ids[0]

    @property
    def others(self) -> tuple[str, ...]:
        """The members that join the primary as workers."""
        return self.member_ids[1:]


def read_distributed(environ: Mapping[str, str]) -> DistributedTask | None:
    """This execution's ``distributed.json``, or None outside a distributed task."""
    path = config_dir(environ) / "distributed.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        count = (environ.get("VH_DIST_MEMBER_COUNT") or "1").strip()
        if count not in ("0", "1"):
            raise SettingsError(
                f"VH_DIST_MEMBER_COUNT={count} says this is a distributed task, but {path} is "
                "missing: mountproc needs it to find the other members"
            ) from None
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"cannot read Valohai's distributed config {path}: {exc}") from None
    try:
        return _distributed(data, environ)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SettingsError(
            f"Valohai's distributed config {path} is not as expected ({type(exc).__name__}: {exc})"
        ) from None


def _distributed(data: Any, environ: Mapping[str, str]) -> DistributedTask | None:
    members = {str(m["member_id"]): m for m in data["members"]}
    if len(members) < 2:
        return None
    me = str(data.get("config", {}).get("member_id") or environ["VH_DIST_MEMBER_ID"])
    if me not in members:
        raise ValueError(f"this member {me!r} is not among the members {sorted(members)}")
    ids = tuple(sorted(members, key=_rank_key(list(members))))
    return DistributedTask(me, ids, _private_ip(members[ids[0]]), _private_ip(members[me]))


def _rank_key(ids: list[str]) -> Callable[[str], Any]:
    """valohai-utils' order of members: numerically when every id is a number."""
    if all(i.lstrip("-").isdigit() for i in ids):
        return int
    return str


def _private_ip(member: Mapping[str, Any]) -> str:
    """A member's first private address that other machines can reach (IPv6 link-local
    addresses need an interface and are skipped)."""
    for ip in member["network"]["local_ips"]:
        if not str(ip).lower().startswith("fe80:"):
            return str(ip)
    raise ValueError(f"member {member['member_id']!r} has no usable local IP")
