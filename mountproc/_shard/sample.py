"""The WebDataset sample format, owned here alone: member names, the sample's ``.json`` record,
and a transform's outputs turned into member bytes.

A sample is the members ``<key>.<suffix>`` of one source file, adjacent in its tar. The key is
the source path relative to the source root with ``%``, dots in the file name, control
characters and undecodable bytes percent-escaped, so keys are unique, never absolute, never
``..``, and WebDataset splits key and suffix correctly. ``<key>.json`` is mountproc's record of
the file as it was read (path, its exact bytes, size, mtime, sha256), so a transform may not use
that suffix.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from typing import Any

RECORD_SUFFIX = "json"
"""Each sample's record (source path, size, mtime, sha256), as ``<key>.json`` (as img2dataset
writes its own): WebDataset readers get it as ``sample["json"]``."""

_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}(\.[A-Za-z0-9][A-Za-z0-9_-]{0,31})*$")


def member_key(relpath: str) -> str:
    """The sample key of a source path (see the module docstring)."""
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe relative path {relpath!r}")
    *dirs, name = parts
    return "/".join([*(_escape(d, "") for d in dirs), _escape(name, ".")])


def _escape(part: str, extra: str) -> str:
    out = []
    for ch in part:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"%{code - 0xDC00:02X}")
        elif ch == "%" or ch in extra or code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        else:
            out.append(ch)
    return "".join(out)


def normalize_outputs(value: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Turn a transform's return value into ``(suffix, bytes)`` pairs sorted by suffix."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"transform must return a mapping of suffix to content, not {type(value).__name__}"
        )
    out: list[tuple[str, bytes]] = []
    for suffix, content in value.items():
        if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix):
            raise ValueError(
                f"invalid output suffix {suffix!r}: use letters, digits, '-', '_', '.'"
            )
        out.append((suffix, _encode(suffix, content)))
    return sorted(out)


def _encode(suffix: str, content: Any) -> bytes:
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    if isinstance(content, str):
        return content.encode("utf-8")
    if suffix.endswith("json"):
        return _json_bytes(content)
    raise TypeError(f"output {suffix!r} must be bytes or str, not {type(content).__name__}")


def record(relpath: str, size: int, mtime_ns: int, sha256: str) -> bytes:
    """The ``<key>.json`` member of a sample: where it came from and what was read. ``path`` is
    valid UTF-8 always (undecodable bytes as ``\\xNN``, as in the manifest), so that every
    loader reads it (pyarrow refuses lone surrogates); ``path_b64`` keeps the exact bytes."""
    raw = os.fsencode(relpath)
    data = {
        "path": raw.decode("utf-8", "backslashreplace"),
        "path_b64": base64.b64encode(raw).decode("ascii"),
        "size": size,
        "mtime_ns": mtime_ns,
        "sha256": sha256,
    }
    return _json_bytes(data)


def _json_bytes(value: Any) -> bytes:
    # a path with undecodable bytes holds lone surrogates: write them as JSON's \udcNN
    # escapes, which decode back to the same string
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def members(
    relpath: str, outputs: list[tuple[str, bytes]], record_bytes: bytes
) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in order: the outputs and the record, named by key. No
    output, no sample: a record alone would be an empty sample."""
    if not outputs:
        return []
    key = member_key(relpath)
    return [
        (f"{key}.{suffix}", data)
        for suffix, data in sorted([*outputs, (RECORD_SUFFIX, record_bytes)])
    ]


def uses_reserved(outputs: list[tuple[str, bytes]]) -> bool:
    """Whether a transform's outputs name the record's suffix (the job's mistake, on every file)."""
    return any(suffix == RECORD_SUFFIX for suffix, _ in outputs)


def key_of(member: str) -> str:
    """The sample key of a member name: WebDataset's ``__key__`` (what precedes the first dot
    of the name's last component; dots of the source name are escaped)."""
    head, _, last = member.rpartition("/")
    return f"{head}/{last.split('.', 1)[0]}" if head else last.split(".", 1)[0]
