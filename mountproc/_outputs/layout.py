"""The on-disk layout of a run, owned here alone: its working area in scratch and the names it
publishes in outputs.

    <scratch>/<job>/                    RunPaths.root: the run's working area (a test-mode
                                        run's: <scratch>/<job>.test-mode/)
        run.json                        what decides the shards and their bytes (resume)
        .mountproc-token                a worker that reads it shares this scratch
        listing.parquet                 every listed entry, in listing order
        plan.parquet                    the listing with a shard number per selected file
        selection.parquet               an increment's listing, carried files marked as such
        carried.parquet                 their rows, from the earlier run's manifest
        shards/                         tars being built (``<tar>.<pid>-<id>.partial``), copies of
                                        tars from workers' own disks, per-shard worker notes and
                                        ``tmp-NNNNNN/`` (a transform's ``ctx.tmp_dir``)
        results/shard-NNNNNN.parquet    one shard's per-file results
        results/shard-NNNNNN.json       its completion record, written once its tar is published
        <job>-manifest.parquet ...      the run's files, built here, then published
    <outputs>/
        <job>-NNNNNN.tar                one tar per shard, read-only once published (an
                                        increment's: <job>-incN-NNNNNN.tar)
        <job>-manifest.parquet          one row per listed entry
        <job>-summary.json              what the run did
        <job>-wids-index.json           a wids shard index of the tars
        valohai.metadata.jsonl          one line per published file
        test-mode/                      a test-mode run's outputs, laid out the same way
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

METADATA_NAME = "valohai.metadata.jsonl"
STATE_NAME = "run.json"
TOKEN_NAME = ".mountproc-token"
TEST_MODE_DIR = "test-mode"


def manifest_name(job: str) -> str:
    """A job's manifest's name in outputs."""
    return f"{job}-manifest.parquet"


def results_path(directory: Path, shard: int) -> Path:
    """Where one shard's per-file results live (written as shards finish, read by the manifest)."""
    return directory / f"shard-{shard:06d}.parquet"


def record_path(directory: Path, shard: int) -> Path:
    """Where one shard's completion record lives."""
    return directory / f"shard-{shard:06d}.json"


@dataclass(frozen=True)
class RunPaths:
    """The run's working area in scratch, and the names it publishes in outputs."""

    outputs: Path
    scratch: Path
    job: str
    test_mode: bool = False  # a state of its own: test and full runs do not resume each other
    increment: int = 1  # which increment of the job's versions (--since): 1 for a full run

    @classmethod
    def of(
        cls, outputs: Path, scratch: Path, job: str, test_mode: bool, increment: int = 1
    ) -> RunPaths:
        """A run's paths: a test-mode run publishes into ``<outputs>/test-mode/``, beside a full
        run's outputs, which it never touches."""
        where = outputs / TEST_MODE_DIR if test_mode else outputs
        return cls(where, scratch, job, test_mode, increment)

    @property
    def root(self) -> Path:
        """The run's working area."""
        return self.scratch / (f"{self.job}.test-mode" if self.test_mode else self.job)

    @property
    def shards(self) -> Path:
        """Where tars are built and workers keep their notes."""
        return self.root / "shards"

    @property
    def results(self) -> Path:
        """Per-shard results and completion records."""
        return self.root / "results"

    @property
    def listing(self) -> Path:
        """The listing of the source."""
        return self.root / "listing.parquet"

    @property
    def plan(self) -> Path:
        """The listing with each selected file's shard."""
        return self.root / "plan.parquet"

    @property
    def token(self) -> Path:
        """The token file a worker reads to tell whether it shares this scratch."""
        return self.root / TOKEN_NAME

    @property
    def manifest(self) -> str:
        """The manifest's name in outputs."""
        return manifest_name(self.job)

    @property
    def summary(self) -> str:
        """The summary's name in outputs."""
        return f"{self.job}-summary.json"

    @property
    def index(self) -> str:
        """The wids index's name in outputs."""
        return f"{self.job}-wids-index.json"

    @property
    def tar_prefix(self) -> str:
        """What every tar name of this job starts with."""
        return f"{self.job}-"

    def tar_name(self, index: int) -> str:
        """The name of shard ``index``'s tar; an increment's names never collide with those of
        the versions before it (``<job>-inc2-000000.tar``)."""
        number = f"inc{self.increment}-" if self.increment > 1 else ""
        return f"{self.tar_prefix}{number}{index:06d}.tar"

    def owns(self, name: str) -> bool:
        """Whether ``name`` (in outputs) is a file this job publishes: its tars, manifest,
        summary and index; not ``valohai.metadata.jsonl``, which every writer shares."""
        if name in (self.manifest, self.summary, self.index):
            return True
        return re.fullmatch(rf"{re.escape(self.job)}-(inc\d+-)?\d{{6}}\.tar", name) is not None

    def previous_outputs(self) -> list[Path]:
        """Files in outputs that an earlier run of this job published."""
        if not self.outputs.is_dir():
            return []
        return sorted(p for p in self.outputs.iterdir() if self.owns(p.name))
