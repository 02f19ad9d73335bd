"""Valohai inputs as a run's source: ``inputs.json`` (each input's files, their sizes, datum
URIs and, for an on-demand input, pre-signed URLs) and the ``input_request`` endpoint of
``api.json`` that issues fresh URLs once those expire."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mountproc._errors import MountError, SettingsError
from mountproc._records import FileEntry, RemoteFiles
from mountproc._valohai.environment import VALOHAI_ROOT, config_dir

ON_DEMAND = "on-demand"
PRESIGNED_MAX = 100_000
"""Beyond about this many files Valohai gives an on-demand input no pre-signed URLs: it needs
machine roles (the workers' own credentials for the data store), which mountproc does not use."""


@dataclass(frozen=True)
class InputFile:
    """One file of an input as ``inputs.json`` lists it."""

    name: str  # its path within the input (``dogs/000201.jpg``): the listing's path
    size: int
    url: str | None  # the pre-signed URL of an on-demand file (``storage_uri``)
    datum: str | None  # ``datum://...``


@dataclass(frozen=True)
class InputRequest:
    """Valohai's ``input_request`` endpoint (``api.json``): fresh URLs for an input's files."""

    url: str
    method: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ValohaiInput:
    """A Valohai input named by ``--input``: downloaded to ``path``, or on demand (``files``
    carry URLs, nothing is on disk)."""

    name: str
    path: Path
    on_demand: bool
    input_id: str | None = None
    files: tuple[InputFile, ...] = ()
    request: InputRequest | None = None

    def datums(self) -> dict[str, str]:
        """Each file's datum URI by its path within the input."""
        return {f.name: f.datum for f in self.files if f.datum}

    @cached_property
    def urls(self) -> dict[str, str]:
        """Each on-demand file's pre-signed URL by its path within the input."""
        return {f.name: f.url for f in self.files if f.url}


def remote_files(found: ValohaiInput | None, entries: Sequence[FileEntry]) -> RemoteFiles | None:
    """Where a worker downloads a shard's ``entries`` (None: they are on disk)."""
    if found is None or not found.on_demand:
        return None
    try:
        urls = tuple(found.urls[e.path] for e in entries)
    except KeyError as exc:
        raise MountError(
            f"Valohai input {found.name} has no file {exc.args[0]!r}, which this run's listing "
            "holds: the input changed since the run was listed; run again with --fresh"
        ) from None
    req = found.request
    if req is None:
        return RemoteFiles(found.name, found.input_id, urls)
    return RemoteFiles(found.name, found.input_id, urls, req.url, req.method, req.headers)


def inputs_dir(environ: Mapping[str, str]) -> Path:
    """``VH_INPUTS_DIR``, else ``/valohai/inputs``."""
    return Path(environ.get("VH_INPUTS_DIR") or VALOHAI_ROOT / "inputs")


def find_input(name: str, environ: Mapping[str, str]) -> ValohaiInput:
    """The input ``name`` of this execution; raise ``SettingsError`` when there is none."""
    path = inputs_dir(environ) / name
    listed = _read_json(config_dir(environ) / "inputs.json")
    if listed is None:  # no inputs.json (run by hand): a directory of that name will do
        if path.is_dir():
            return ValohaiInput(name, path, on_demand=False)
        raise SettingsError(
            f"--input {name}: no Valohai input of that name ({path} does not exist and there is "
            f"no {config_dir(environ) / 'inputs.json'}); declare it in the step's inputs"
        )
    if not isinstance(listed, dict) or name not in listed:
        known = ", ".join(sorted(listed)) if isinstance(listed, dict) else ""
        raise SettingsError(
            f"--input {name}: this execution has no input of that name (its inputs: "
            f"{known or 'none'}); declare it in the step (mountproc yaml --input {name})"
        )
    try:
        return _parse_input(name, path, listed[name], environ)
    except (KeyError, TypeError, ValueError) as exc:
        raise SettingsError(
            f"--input {name}: inputs.json is not as expected ({type(exc).__name__}: {exc})"
        ) from None


def _parse_input(name: str, path: Path, data: Any, environ: Mapping[str, str]) -> ValohaiInput:
    entries = data["files"]
    on_demand = any(e.get("download_intent") == ON_DEMAND for e in entries)
    files = tuple(
        InputFile(str(e["name"]), int(e["size"]), e.get("storage_uri"), e.get("uri"))
        for e in entries
    )
    input_id = str(data.get("input_id") or (entries[0].get("input_id") if entries else "") or "")
    if not on_demand:
        return ValohaiInput(name, path, False, input_id or None, files)
    _check_names(name, files)
    _refuse_without_urls(name, files)
    request = read_input_request(environ) if input_id else None
    return ValohaiInput(name, path, True, input_id or None, files, request)


def _check_names(name: str, files: tuple[InputFile, ...]) -> None:
    """An on-demand file's name is its path in the listing: relative, unique, no ``..``."""
    seen: set[str] = set()
    for f in files:
        parts = f.name.split("/")
        if f.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise SettingsError(f"--input {name}: the file name {f.name!r} is not a relative path")
        if f.name in seen:
            raise SettingsError(
                f"--input {name}: two files are named {f.name!r}: give the input "
                "`keep-directories: suffix` (or full) so that names keep their folders"
            )
        seen.add(f.name)


def _refuse_without_urls(name: str, files: tuple[InputFile, ...]) -> None:
    """mountproc downloads on-demand files only through pre-signed http(s) URLs."""
    missing = sum(1 for f in files if not (f.url or "").startswith(("https://", "http://")))
    if missing:
        raise SettingsError(
            f"--input {name}: {missing} of its {len(files)} files have no pre-signed URL "
            f"(beyond {PRESIGNED_MAX:,} files Valohai needs machine roles instead, which "
            "mountproc does not use): make it a downloaded input (drop `download: on-demand`), "
            "or put the data on a mount"
        )


def read_input_request(environ: Mapping[str, str]) -> InputRequest | None:
    """The ``input_request`` endpoint of ``api.json``, or None when there is none."""
    path = config_dir(environ) / "api.json"
    data = _read_json(path)
    entry = data.get("input_request") if isinstance(data, dict) else None
    if not isinstance(entry, dict) or not entry.get("url"):
        return None
    headers = entry.get("headers") or {}
    pairs = tuple((str(k), str(v)) for k, v in headers.items())
    return InputRequest(str(entry["url"]), str(entry.get("method") or "POST").upper(), pairs)


def _read_json(path: Path) -> Any:
    """A JSON file's value; None when the file does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read Valohai's {path}: {exc}") from None
