"""Increments (``--since``, ``--retry-failed``): an earlier run's manifest compared with the new
listing, by path, size and mtime (or content), to process only what changed.

A file is *added* (not in the base version), *changed* (size or mtime differ; with
``--compare sha256``, its bytes), *deleted* (in the base version, no longer listed) or
*unchanged*. A base tar that held a changed or deleted file is replaced: its unchanged files are
processed again into the increment's new tars, and the new dataset version excludes it, so no
sample is duplicated or lost. Every other unchanged file is *carried*: its manifest row is the
base version's, its sample stays in a base tar the new version keeps.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mountproc import _arrow as arrow
from mountproc._errors import UsageError
from mountproc._listing.listing import LISTING_SCHEMA
from mountproc._mounts.table import show
from mountproc._outputs.layout import manifest_name
from mountproc._outputs.manifest import Version, read_version
from mountproc._outputs.resume import sha256_file
from mountproc._records import CARRIED, Status

log = logging.getLogger(__name__)

HASH_THREADS = 8
"""Files hashed at once by ``--compare sha256`` (a network file system's reads overlap)."""


@dataclass(frozen=True)
class Previous:
    """The earlier run an increment builds on: its manifest, and the version it describes."""

    manifest: Path
    digest: str  # the manifest file's sha256: an increment's resume identity
    version: Version


def previous_run(path: Path, job: str, optional: bool = False) -> Previous | None:
    """The earlier run named by ``--since``/``--retry-failed``: a manifest, or a directory
    holding ``<job>-manifest.parquet``. An empty directory (an optional Valohai input left
    empty), or with ``optional`` a missing one, means there is none: the run is a full one."""
    if (path.is_dir() and not any(path.iterdir())) or (optional and not path.exists()):
        log.info("no earlier run in %s (empty): a full run", show(path))
        return None
    manifest = path / manifest_name(job) if path.is_dir() else path
    if not manifest.is_file():
        where = f"{show(path)} holds no {manifest.name}" if path.is_dir() else f"{show(path)}"
        raise UsageError(f"earlier run not found: {where} (give its manifest or its outputs)")
    try:
        version = read_version(manifest)
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(
            f"cannot read the earlier run's manifest {show(manifest)}: {exc}"
        ) from None
    if version is None:
        raise UsageError(
            f"{show(manifest)} does not say which tars its version holds (written by an older "
            "mountproc): run the job in full once (--fresh) to start a versioned history"
        )
    return Previous(manifest, sha256_file(manifest), version)


@dataclass(frozen=True)
class Increment:
    """What an increment found: its files by kind, and the base tars it replaces."""

    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    retried: int = 0  # files that failed in the base version, processed again
    reprocessed: int = 0  # unchanged files of replaced tars, processed again
    carried: int = 0
    rebuilt: tuple[str, ...] = ()  # base tars replaced by new ones (some of their files remain)
    removed: tuple[str, ...] = ()  # base tars all of whose files were deleted

    @property
    def excluded(self) -> tuple[str, ...]:
        """The base tars the new version leaves out."""
        return tuple(sorted(self.rebuilt + self.removed))

    def as_dict(self) -> dict[str, Any]:
        """As the summary and the run's state hold it."""
        return {**asdict(self), "rebuilt": list(self.rebuilt), "removed": list(self.removed)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Increment:
        """From the run's saved state."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(
            **{**fields, "rebuilt": tuple(data["rebuilt"]), "removed": tuple(data["removed"])}
        )


def listing_of(previous: Previous, out: Path) -> int:
    """Write the base version's listing as its manifest holds it (``--retry-failed`` alone
    lists nothing); return its number of entries."""
    table = pq.read_table(
        previous.manifest, columns=[*LISTING_SCHEMA.names[:-1], "status", "error"]
    )
    excluded = pc.equal(table["status"], Status.EXCLUDED.value)
    reasons = pc.if_else(excluded, table["error"], pa.scalar(None, pa.string()))
    columns = [table[name] for name in LISTING_SCHEMA.names[:-1]] + [reasons]
    pq.write_table(pa.Table.from_arrays(columns, schema=LISTING_SCHEMA), out)
    return int(table.num_rows)


@dataclass(frozen=True)
class Selection:
    """How an increment compares: by ``mtime`` or ``sha256``, under ``source``; whether the base
    version's failed files are processed again."""

    source: Path
    compare: str = "mtime"
    retry_failed: bool = False


def select(
    listing: Path, previous: Previous, how: Selection, out: Path, carried: Path
) -> Increment:
    """Write ``out``, the listing with carried files marked as such, and ``carried``, their base
    rows in listing order; return what the comparison found."""
    new = pq.read_table(listing)
    new = new.append_column("row", arrow.counting(new.num_rows))
    base = pq.read_table(previous.manifest)
    base = base.append_column("base_row", arrow.counting(base.num_rows))
    listed = base.filter(pc.not_equal(base["status"], Status.EXCLUDED.value))
    eligible = new.filter(pc.is_null(new["skip_reason"]))
    pairs = _pair(eligible, listed).sort_by("row")
    matched = pc.is_valid(pairs["base_row"])
    same = pc.and_(matched, _unchanged(pairs, how))
    gone = listed.filter(
        pc.invert(pc.is_in(listed["path_raw"], value_set=pairs.filter(matched)["path_raw"]))
    )
    replaced = _tars(pairs.filter(pc.and_(matched, pc.invert(same)))) | _tars(gone)
    in_replaced = pc.is_in(pairs["tar"], value_set=arrow.array(sorted(replaced), pa.string()))
    failed = pc.equal(pairs["status"], Status.FAILED.value)
    again = pc.and_(same, pc.or_kleene(pc.fill_null(in_replaced, False), _retry(failed, how)))
    carry = pc.and_(same, pc.invert(again))
    _write_selection(new, pairs.filter(carry)["row"], out)
    pq.write_table(base.take(pairs.filter(carry)["base_row"]).drop_columns(["base_row"]), carried)
    rebuilt = _tars(pairs.filter(matched)) & replaced
    return Increment(
        added=_count(pc.invert(matched)),
        changed=_count(pc.and_(matched, pc.invert(same))),
        deleted=gone.num_rows,
        unchanged=_count(same),
        retried=_count(
            pc.and_(again, pc.and_(failed, pc.invert(pc.fill_null(in_replaced, False))))
        ),
        reprocessed=_count(pc.and_(same, pc.fill_null(in_replaced, False))),
        carried=_count(carry),
        rebuilt=tuple(sorted(rebuilt)),
        removed=tuple(sorted(replaced - rebuilt)),
    )


def _pair(eligible: pa.Table, listed: pa.Table) -> pa.Table:
    """Each eligible listed file with its base row, if any (base columns prefixed ``base_``)."""
    base = listed.select(["path_raw", "size", "mtime_ns", "status", "tar", "sha256", "base_row"])
    base = base.rename_columns(
        ["path_raw", "base_size", "base_mtime_ns", "status", "tar", "base_sha256", "base_row"]
    )
    mine = eligible.select(["path_raw", "size", "mtime_ns", "row"])
    return mine.join(base, keys="path_raw", join_type="left outer")


def _unchanged(pairs: pa.Table, how: Selection) -> pa.Array:
    """Whether each paired file is the same as in the base version."""
    size = pc.fill_null(pc.equal(pairs["size"], pairs["base_size"]), False)
    if how.compare != "sha256":
        return pc.and_(
            size, pc.fill_null(pc.equal(pairs["mtime_ns"], pairs["base_mtime_ns"]), False)
        )
    mask = size.to_pylist()
    raws = pairs["path_raw"].to_pylist()
    todo = [raw for raw, ok in zip(raws, mask, strict=True) if ok]
    log.info("comparing %d file(s) with the base version by content (sha256)", len(todo))
    digests = dict(zip(todo, _hash_all(how.source, todo), strict=True))
    now = arrow.array([digests.get(raw) for raw in raws], pa.string())
    return pc.fill_null(pc.equal(now, pairs["base_sha256"]), False)


def _hash_all(source: Path, raws: list[bytes]) -> list[str | None]:
    """The sha256 of each file (None where it cannot be read: it counts as changed)."""
    root = os.fsencode(source)
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="mountproc-hash") as pool:
        return list(pool.map(lambda raw: _sha256_or_none(os.path.join(root, raw)), raws))


def _sha256_or_none(path: bytes) -> str | None:
    try:
        return sha256_file(Path(os.fsdecode(path)))
    except OSError:
        return None


def _retry(failed: pa.Array, how: Selection) -> pa.Array:
    """Whether each file is processed again for having failed in the base version."""
    return pc.and_(pc.fill_null(failed, False), pa.scalar(how.retry_failed))


def _tars(table: pa.Table) -> set[str]:
    """The tars named by ``table``'s rows."""
    return {t for t in pc.unique(table["tar"]).to_pylist() if t is not None}


def _count(mask: Any) -> int:
    return int(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0)


def _write_selection(listing: pa.Table, carried_rows: Any, out: Path) -> None:
    """The listing with the carried rows' skip reason set to ``CARRIED``."""
    marked = pc.is_in(listing["row"], value_set=carried_rows)
    reasons = pc.if_else(marked, pa.scalar(CARRIED), listing["skip_reason"])
    columns = [listing[name] for name in LISTING_SCHEMA.names[:-1]] + [reasons]
    pq.write_table(pa.Table.from_arrays(columns, schema=LISTING_SCHEMA), out)
