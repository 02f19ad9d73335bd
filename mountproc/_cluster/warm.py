"""Worker processes that start warm: forked from a server that has imported what a worker runs.

An embedded cluster's worker started by Python's ``spawn`` is a new interpreter that imports
``distributed`` and mountproc's worker code before it can take a shard: on two cores that is
about half a second, after the driver has imported the same modules for itself. ``warm_up``
starts multiprocessing's fork server at the beginning of a run, so those imports happen once,
on another core, while the driver imports its own code and lists the tree; every worker of the
embedded cluster (and every worker its nanny restarts) is then forked from it ready to run.

A forked worker has the environment the server started with, not the driver's at the time
the worker starts, as a spawned one would: so the server starts with the variables a nanny sets
before it starts a worker (``PRE_SPAWN``: one thread for BLAS, glibc's thresholds), ``matches``
tells whether the config still asks for those, and ``changed_environ`` is what the driver's
environment has gained since, for the nanny to set.

This module imports nothing heavy itself: it runs before Dask is imported.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from multiprocessing import forkserver

log = logging.getLogger(__name__)

METHOD = "forkserver"
PRELOAD = (
    "mountproc._cluster.server_exit",
    "distributed",
    "mountproc._cluster.feed",
    "mountproc._shard.worker",
)
"""What every worker imports before its first shard (never pyarrow or pandas: workers don't),
after ``server_exit``, which makes the server itself exit without tearing those down."""

DASK_TRIM = "65536"
"""The glibc trim threshold of distributed's default ``distributed.nanny.pre-spawn-environ``."""

MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "33554432"}
"""glibc's allocator thresholds in the workers mountproc starts, instead of distributed's.

distributed has its nannies set only a trim threshold of 64 KiB, to return freed memory to
the system at once. Setting it stops glibc from adapting its mmap threshold, so every buffer
over 128 KiB (a file read, a decoded image) is mapped fresh and unmapped when freed: the
kernel faults in and zeroes each of its pages again. With both thresholds at 32 MiB, buffers
up to Pillow's 16 MiB image blocks are reused from the heap, and a worker still gives back
what is free beyond 32 MiB. On 2,000 camera JPEGs the two workers used 17.6 CPU-seconds
instead of 21.9."""

PRE_SPAWN = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    **MALLOC,
}
"""What the embedded cluster's nannies set before starting a worker (``pre_spawn``, checked
by ``matches``): distributed's defaults, with ``MALLOC``."""

_started = False
_environ: dict[str, str] = {}


def pre_spawn(configured: Mapping[str, object]) -> dict[str, object]:
    """The embedded cluster's ``distributed.nanny.pre-spawn-environ`` given the config's:
    ``MALLOC`` in place of distributed's trim threshold, unless the config chose its own."""
    chosen = str(configured.get("MALLOC_TRIM_THRESHOLD_")) != DASK_TRIM
    if chosen or "MALLOC_MMAP_THRESHOLD_" in configured:
        return dict(configured)
    return {**configured, **MALLOC}


def available() -> bool:
    """Whether this platform has a fork server (Linux and macOS, not Windows)."""
    return METHOD in multiprocessing.get_all_start_methods()


def warm_up() -> None:
    """Start the fork server now, importing ``PRELOAD``; returns at once (the server imports in
    a process of its own). Once per process: later runs reuse the server."""
    global _started
    if _started or not available():
        return
    multiprocessing.get_context(METHOD).set_forkserver_preload(list(PRELOAD))
    with _environment({**PRE_SPAWN, **os.environ}) as environ:
        forkserver.ensure_running()
    _environ.update(environ)
    _started = True
    log.debug("fork server for the embedded cluster's workers started")


def started() -> bool:
    """Whether ``warm_up`` started the fork server in this process."""
    return _started


def matches(pre_spawn: Mapping[str, str]) -> bool:
    """Whether the server started with the variables a nanny would set before spawning a worker
    (``pre_spawn``: the config's, as the nanny reads it)."""
    return all(_environ.get(k) == v for k, v in pre_spawn.items())


def changed_environ() -> dict[str, str]:
    """The driver's variables that the server did not start with, or with another value."""
    return {k: v for k, v in os.environ.items() if _environ.get(k) != v}


@contextmanager
def _environment(environ: dict[str, str]) -> Iterator[dict[str, str]]:
    """``os.environ`` is ``environ`` inside (what a process started there inherits)."""
    saved = dict(os.environ)
    os.environ.update(environ)
    try:
        yield dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
