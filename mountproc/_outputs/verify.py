"""``mountproc verify``: re-read every tar in an outputs directory and check it against
``valohai.metadata.jsonl`` (sha256, bytes, member count) and the job's manifest (member names,
in order, and the files each tar holds).

Each tar is read once, as a stream: tarfile lists the members while a reader beneath it hashes
every byte it passes up, and the rest of the file is hashed to its end. The manifest is reduced
to a count and a digest of member names per tar, so a manifest of millions of rows is never
held in memory; a tar whose names disagree is described by reading its rows again.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mountproc._errors import UsageError, VerificationFailed
from mountproc._outputs.layout import METADATA_NAME, manifest_name
from mountproc._outputs.manifest import read_version

CHUNK = 1 << 20
SHOWN_HEX = 16  # of a sha256 in a message


@dataclass(frozen=True)
class Listed:
    """A tar as ``valohai.metadata.jsonl`` records it."""

    name: str
    sha256: str
    bytes: int
    members: int
    files: int


class _NameDigest:
    """A count and a sha256 of an ordered list of member names."""

    def __init__(self) -> None:
        self.count = 0
        self.sha = hashlib.sha256()

    def add(self, name: str) -> None:
        self.count += 1
        self.sha.update(name.encode("utf-8", "surrogateescape") + b"\0")

    def key(self) -> tuple[int, str]:
        return self.count, self.sha.hexdigest()


@dataclass
class Expected:
    """What a job's manifest says one tar holds."""

    manifest: Path
    rows: int = 0
    names: _NameDigest = field(default_factory=_NameDigest)


@dataclass(frozen=True)
class Scan:
    """What one pass over a tar file found."""

    sha256: str
    size: int
    names: list[str]
    error: str | None  # why tarfile could not read it to its end


@dataclass(frozen=True)
class Verdict:
    """The outcome for one tar: its problems (none when it is good)."""

    name: str
    problems: tuple[str, ...] = ()
    members: int = 0

    @property
    def ok(self) -> bool:
        """Whether the tar passed every check."""
        return not self.problems

    def line(self) -> str:
        """The report line for this tar."""
        if self.ok:
            return f"ok  {self.name}  {_plural(self.members, 'member')}"
        return f"BAD {self.name}: {'; '.join(self.problems)}"


def verify_outputs(directory: Path) -> Iterator[Verdict]:
    """One verdict per tar the metadata lists, the manifest names or the directory holds."""
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise UsageError(f"outputs directory {directory} {what}")
    listed, jobs, foreign = read_metadata(directory)
    expected: dict[str, Expected] = {}
    for job in sorted(jobs):
        expected.update(read_manifest(directory / manifest_name(job)))
    present = {p.name for p in directory.iterdir() if p.name.endswith(".tar") and p.is_file()}
    present -= foreign  # another writer's tars: theirs to check
    for name in kept_from_base(directory, jobs) - present - set(listed):
        expected.pop(name, None)  # in the base version an increment builds on, not here
    for name in sorted(present | set(listed) | set(expected)):
        if name not in present:
            yield Verdict(name, (_missing(name, listed),))
        elif name not in listed:
            yield Verdict(name, ("unlisted",))
        else:
            yield check_tar(directory / name, listed[name], expected.get(name))


def kept_from_base(directory: Path, jobs: set[str]) -> set[str]:
    """The tars the jobs' manifests keep from the base versions their increments build on."""
    kept: set[str] = set()
    for job in jobs:
        path = directory / manifest_name(job)
        version = read_version(path) if path.is_file() else None
        kept.update(version.carried if version is not None else ())
    return kept


def kept_note(directory: Path) -> str | None:
    """A line on the tars an increment keeps from its base version (not in this directory)."""
    _, jobs, _ = read_metadata(directory)
    kept = kept_from_base(directory, jobs)
    if not kept:
        return None
    return f"{_plural(len(kept), 'tar')} of the base version are kept by reference, not here"


def _missing(name: str, listed: dict[str, Listed]) -> str:
    """Why an absent tar should be there."""
    if name in listed:
        return "missing"
    return f"missing (named by the manifest, not listed in {METADATA_NAME})"


def conclusion(directory: Path, verdicts: Sequence[Verdict]) -> str:
    """The summary line when every tar is good; else raise VerificationFailed naming the bad."""
    bad = [v for v in verdicts if not v.ok]
    checked = f"verified {_plural(len(verdicts), 'tar')} in {directory}"
    if not bad:
        return f"{checked}: all ok"
    named = ", ".join(f"{v.name} ({_headline(v.problems[0])})" for v in bad)
    raise VerificationFailed(f"{checked}: {len(bad)} bad: {named}")


def _headline(problem: str) -> str:
    """A problem's first words: ``truncated``, ``altered``, ``missing``..."""
    return re.split(r" \(|:", problem, maxsplit=1)[0]


def read_metadata(directory: Path) -> tuple[dict[str, Listed], set[str], set[str]]:
    """The tars mountproc's lines of ``valohai.metadata.jsonl`` list, by name, the jobs they
    name, and the files other writers' lines name."""
    path = directory / METADATA_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(
            f"no {METADATA_NAME} in {directory}: not the outputs of a finished mountproc run"
        ) from None
    listed: dict[str, Listed] = {}
    jobs: set[str] = set()
    foreign: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, meta = _parse_line(line, f"{path} line {number}")
        if not isinstance(meta.get("mountproc.job"), str):
            foreign.add(name)  # a line mountproc did not write
            continue
        jobs.add(meta["mountproc.job"])
        if name.endswith(".tar"):
            listed[name] = _listed(name, meta, f"{path} line {number}")
    if not jobs:
        raise UsageError(f"{path} names no mountproc job: not written by mountproc run")
    return listed, jobs, foreign


def _parse_line(line: str, where: str) -> tuple[str, dict[str, Any]]:
    """A metadata line's file name and metadata object."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("file"), str):
        raise UsageError(f'{where} has no "file" name')
    meta = data.get("metadata")
    return data["file"], meta if isinstance(meta, dict) else {}


def _listed(name: str, meta: dict[str, Any], where: str) -> Listed:
    """A tar's recorded facts; a line without them was not written by ``mountproc run``."""
    wanted = {"sha256": str, "bytes": int, "members": int, "files": int}
    lacking = [k for k, kind in wanted.items() if not isinstance(meta.get(k), kind)]
    if lacking:
        raise UsageError(f"{where}: {name} has no {', '.join(lacking)}: not written by mountproc")
    return Listed(name, meta["sha256"], meta["bytes"], meta["members"], meta["files"])


def read_manifest(path: Path) -> dict[str, Expected]:
    """Per tar, the rows and the ordered member names the manifest gives it (streamed)."""
    out: dict[str, Expected] = {}
    for tar, members in _manifest_rows(path):
        if tar is None:
            continue  # a failed or skipped entry: in no tar
        expected = out.setdefault(tar, Expected(path))
        expected.rows += 1
        for name in members:
            expected.names.add(name)
    return out


def _manifest_rows(path: Path) -> Iterator[tuple[str | None, list[str]]]:
    """``(tar, members)`` of every manifest row, in order."""
    if not path.is_file():
        raise UsageError(f"the manifest {path} is missing: cannot check the tars' members")
    try:
        for batch in pq.ParquetFile(path).iter_batches(columns=["tar", "members"]):
            cols = batch.to_pydict()
            yield from zip(cols["tar"], cols["members"], strict=True)
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"cannot read the manifest {path}: {exc}") from None


def check_tar(path: Path, listed: Listed, expected: Expected | None) -> Verdict:
    """Read ``path`` once and compare it with its metadata line and its manifest rows."""
    try:
        scan = scan_tar(path)
    except OSError as exc:  # a bad sector or a permission: report it, check the other tars
        return Verdict(listed.name, (f"unreadable ({exc.strerror or exc})",))
    if scan.size < listed.bytes:
        return Verdict(
            listed.name, (f"truncated (tar ends early at byte {scan.size} of {listed.bytes})",)
        )
    problems = [p for p in (_altered(scan, listed), _unreadable(scan)) if p]
    problems += _member_problems(scan, listed, expected)
    return Verdict(listed.name, tuple(problems), len(scan.names))


def _altered(scan: Scan, listed: Listed) -> str | None:
    """How the tar's bytes differ from the metadata's, if they do."""
    if scan.size != listed.bytes:
        return f"altered ({scan.size} bytes, metadata says {listed.bytes})"
    if scan.sha256 != listed.sha256:
        return (
            f"altered (sha256 {scan.sha256[:SHOWN_HEX]}..., "
            f"metadata says {listed.sha256[:SHOWN_HEX]}...)"
        )
    return None


def _unreadable(scan: Scan) -> str | None:
    """Why tarfile could not read the tar to its end, if it could not."""
    return None if scan.error is None else f"not a readable tar ({scan.error})"


def _member_problems(scan: Scan, listed: Listed, expected: Expected | None) -> list[str]:
    """Where the tar's members disagree with the manifest and the metadata line."""
    problems = []
    actual = _NameDigest()
    for name in scan.names:
        actual.add(name)
    manifest_key = expected.names.key() if expected else _NameDigest().key()
    if actual.key() != manifest_key:
        wanted = manifest_members(expected.manifest, listed.name) if expected else []
        problems.append(f"members differ from the manifest: {describe(scan.names, wanted)}")
    if len(scan.names) != listed.members:
        problems.append(f"{len(scan.names)} members, metadata says {listed.members}")
    rows = expected.rows if expected else 0
    if rows != listed.files:
        problems.append(f"the manifest puts {rows} files in it, metadata says {listed.files}")
    return problems


def manifest_members(path: Path, tar: str) -> list[str]:
    """The member names the manifest gives ``tar``, in order."""
    return [name for row_tar, members in _manifest_rows(path) if row_tar == tar for name in members]


def describe(actual: Sequence[str], wanted: Sequence[str]) -> str:
    """How a tar's member names differ from the manifest's, in a few words."""
    have, want = set(actual), set(wanted)
    absent = [n for n in wanted if n not in have]
    extra = [n for n in actual if n not in want]
    parts = [f"{len(actual)} in the tar, {len(wanted)} in the manifest"]
    if absent:
        parts.append(f"{len(absent)} not in the tar (first {absent[0]!r})")
    if extra:
        parts.append(f"{len(extra)} not in the manifest (first {extra[0]!r})")
    if not absent and not extra:
        parts.append("the same names in another order or repeated")
    return "; ".join(parts)


class _HashingReader(io.RawIOBase):
    """A read-only file that hashes and counts every byte read through it."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.sha.update(memoryview(buffer)[:n])
        self.size += n
        return n


def scan_tar(path: Path) -> Scan:
    """Hash ``path`` and list its members in one streaming pass."""
    with path.open("rb") as raw:
        reader = _HashingReader(raw)
        names, error = _member_names(reader)
        while reader.read(CHUNK):  # what tarfile left unread: end blocks, record padding
            pass
    return Scan(reader.sha.hexdigest(), reader.size, names, error)


def _member_names(reader: _HashingReader) -> tuple[list[str], str | None]:
    """The names tarfile reads from the stream, and why it stopped early if it did."""
    names: list[str] = []
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK) as tar:
            names.extend(info.name for info in tar)
    except tarfile.TarError as exc:
        return names, f"{type(exc).__name__}: {exc}"
    return names, None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
