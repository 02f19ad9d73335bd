"""Driver side of the sick-mount contract: probe the source in the background while a stage of
the run goes on, so a mount that dies or hangs ends the run even when the stage itself is
blocked on it (a crawl in ``scandir``, shards stuck on workers)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from mountproc._errors import SourceLostError
from mountproc._mounts.table import MountNotAliveError, call_with_timeout, probe_alive

log = logging.getLogger(__name__)

T = TypeVar("T")


class SourceWatch:
    """Probes ``source`` every ``timeout`` seconds (each probe limited to ``timeout`` too);
    once the source is dead, ``check`` raises SourceLostError and ``on_lost`` has been called.
    A ``source`` of None (an on-demand input: no directory) is never probed."""

    def __init__(
        self,
        source: Path | None,
        timeout: float,
        during: str,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self.timeout = timeout
        self.during = during
        self.lost: SourceLostError | None = None
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mountproc-watch", daemon=True)

    def __enter__(self) -> SourceWatch:
        if self.source is not None:
            self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()

    def check(self) -> None:
        """Raise SourceLostError if the source was found dead."""
        if self.lost is not None:
            raise self.lost

    def probe(self, cause: OSError | None = None) -> None:
        """Probe now (a stage saw ENOTCONN, ESTALE...); raise SourceLostError if it is dead."""
        if self.source is None:
            return
        try:
            probe_alive(self.source, self.timeout)
        except (MountNotAliveError, OSError) as exc:  # dead, hung, or gone (FileNotFoundError)
            detail = f"; first seen as {cause}" if cause is not None else ""
            self.lost = SourceLostError(f"{exc} (during {self.during}{detail})")
        self.check()

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a daemon thread and return its result, unless the source dies first:
        a call blocked on a hung mount cannot be cancelled, only abandoned."""
        return call_with_timeout(fn, math.inf, "mountproc-stage", self.check)

    def _run(self) -> None:
        while not self._stop.wait(self.timeout):
            try:
                self.probe()
            except SourceLostError as exc:
                log.error("%s", exc)
                self._on_lost()
                return
