"""How big an embedded cluster the settings ask for: without ``--workers``, no more workers than
shards to run (a worker without a shard only costs its start-up), at most one per CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mountproc._cluster.placement import cluster_options
from mountproc._job import Job
from mountproc._resolve import resolve

CPUS = os.cpu_count() or 1


def _job() -> Job:
    job = Job(name="placement")
    job.transform(lambda src, ctx: {})
    return job


@pytest.mark.parametrize(
    ("shards", "workers"), [(None, None), (0, 1), (1, 1), (2, min(2, CPUS)), (10**6, CPUS)]
)
def test_the_default_size_follows_the_shards(
    tmp_path: Path, shards: int | None, workers: int | None
) -> None:
    run = resolve(_job(), {"source": tmp_path}, {}, {})
    assert cluster_options(run, shards).workers == workers


def test_workers_given_are_started_whatever_the_shards(tmp_path: Path) -> None:
    run = resolve(_job(), {"source": tmp_path, "workers": 3}, {}, {})
    assert cluster_options(run, 1).workers == 3
