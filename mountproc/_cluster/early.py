"""An embedded cluster started on a thread while this process lists the tree: its workers
start (a fresh interpreter each, importing Dask) while the listing runs, one worker until the
shards are known, then as many as the shards can use."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack

from distributed import Client

from mountproc._cluster.client import open_cluster
from mountproc._cluster.placement import cluster_options
from mountproc._errors import ClusterError
from mountproc._resolve import ResolvedRun

log = logging.getLogger(__name__)


class EarlyCluster:
    """``open_cluster`` entered and left on a thread of its own (a client is closed in the
    context it was made in); ``client()`` waits for it, ``close()`` ends it."""

    def __init__(self, run: ResolvedRun) -> None:
        self.run = run
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._ready, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold, name="mountproc-cluster", daemon=True)
        self._thread.start()

    def _hold(self) -> None:
        """Start the cluster, keep it until ``close()``; an error is kept for the caller."""
        try:
            with open_cluster(cluster_options(self.run, shards=1)) as client:
                self._client = client
                self._ready.set()
                self._release.wait()
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def client(self, shards: int) -> Client:
        """The started cluster's client, with as many workers as ``shards`` can use."""
        self._ready.wait()
        if self._client is None:
            raise self._error or ClusterError("cannot start a local Dask cluster")
        want = cluster_options(self.run, shards).workers or 1
        cluster = self._client.cluster
        if self.run.settings.workers is None and want > 1 and cluster is not None:
            cluster.scale(want)
            try:
                self._client.wait_for_workers(want, timeout=self.run.settings.worker_wait)
            except TimeoutError:
                raise ClusterError(f"cannot start {want} local Dask workers") from None
            log.info("scaled the local Dask cluster to %d workers for %d shards", want, shards)
        return self._client

    def close(self) -> None:
        """Close the cluster (on its thread); an error closing it is raised here."""
        self._release.set()
        self._thread.join()
        if self._client is not None and self._error is not None:
            raise self._error


def start_early(stack: ExitStack, run: ResolvedRun) -> EarlyCluster | None:
    """Start the embedded cluster now, closed with ``stack``, unless the settings ask for
    another kind (an existing scheduler, batch jobs, a distributed task's primary)."""
    s = run.settings
    if s.scheduler or s.cluster or run.distributed is not None:
        return None
    early = EarlyCluster(run)
    stack.callback(early.close)
    return early
