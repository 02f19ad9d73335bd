"""Per-file time limits and crash forensics for a worker process (no Dask import).

Python cannot stop a thread and Dask has no task timeout, so when a file overruns its time
limit the watchdog writes a note beside the shard in scratch and kills its own worker process.
Dask's nanny starts a fresh worker and the scheduler reruns the shard; the rerun reads the note
and fails that file instead of running it again. A worker that dies for another reason
(``os._exit``, a crash in native code, the out-of-memory killer) leaves its "in flight" note
behind; a file that was in flight at two deaths is failed the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mountproc._jsonfile import write_json
from mountproc._mounts.table import MountNotAliveError, probe_alive
from mountproc._records import Limits

log = logging.getLogger(__name__)

DEATHS_TO_CONDEMN = 2
"""Worker deaths with the same file in flight before that file is failed: one death may be
someone else's fault (a neighbour's memory, a preempted machine), two are the file's."""

STALLED = -1
"""The position read from an in-flight note that was created but never written."""

POLL_S = 0.5
PROBE_S = 10.0


@dataclass
class _Verdicts:
    """Deaths per file position, and the reasons of the files that must not run again."""

    strikes: dict[str, int] = field(default_factory=dict)
    condemned: dict[str, str] = field(default_factory=dict)


class ShardNotes:
    """The notes one shard keeps in scratch across attempts: the file in flight, and the files
    that must not run again with the reason why."""

    def __init__(self, work_dir: Path, index: int) -> None:
        self.inflight = work_dir / f"{index:06d}.inflight"
        self.verdicts = work_dir / f"{index:06d}.verdicts.json"
        self._fd: int | None = None
        self._lock = threading.Lock()

    def recover(self) -> dict[int, str]:
        """Read what earlier attempts left; return ``{position: reason}`` of condemned files."""
        data = self._load()
        if self.inflight.exists():
            key = self.inflight.read_text().strip() or str(STALLED)
            self.inflight.unlink()
            data.strikes[key] = deaths = data.strikes.get(key, 0) + 1
            if deaths >= DEATHS_TO_CONDEMN and key not in data.condemned:
                data.condemned[key] = (
                    f"the worker process died {deaths} times while processing this file "
                    "(a crash in native code, os._exit, or the out-of-memory killer)"
                )
            self._save(data)
        return {int(k): v for k, v in data.condemned.items()}

    def start(self, pos: int) -> None:
        """Note that the file at ``pos`` is in flight: one write, no fsync (the note must
        survive the death of this process, not of the machine)."""
        if self._fd is None:
            self._fd = os.open(self.inflight, os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(self._fd, f"{pos:>12}\n".encode(), 0)

    def condemn(self, pos: int, reason: str) -> None:
        """Record that the file at ``pos`` must fail with ``reason`` on every later attempt."""
        with self._lock:
            data = self._load()
            data.condemned[str(pos)] = reason
            self._save(data)

    def close(self, *, done: bool) -> None:
        """Drop the in-flight note (this attempt did not die); once done, drop every note."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.inflight.unlink(missing_ok=True)
        if done:
            self.verdicts.unlink(missing_ok=True)

    def _load(self) -> _Verdicts:
        try:
            return _Verdicts(**json.loads(self.verdicts.read_text()))
        except FileNotFoundError:
            return _Verdicts()

    def _save(self, data: _Verdicts) -> None:
        write_json(self.verdicts, asdict(data))


@dataclass(frozen=True)
class _Watch:
    """One file being processed under a time limit."""

    deadline: float
    notes: ShardNotes
    pos: int
    path: str
    source_root: str
    limits: Limits


class Watchdog:
    """One per worker process: kills the process when a watched file overruns its limit."""

    def __init__(self) -> None:
        self._watches: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mountproc-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def file(
        self, notes: ShardNotes, pos: int, path: str, source_root: str, limits: Limits
    ) -> Iterator[None]:
        """Note the file in flight and, with a time limit set, watch it while the block runs."""
        notes.start(pos)
        if limits.file_timeout_s <= 0:
            yield
            return
        watch = _Watch(
            time.monotonic() + limits.file_timeout_s, notes, pos, path, source_root, limits
        )
        key = id(watch)
        with self._lock:
            self._watches[key] = watch
        try:
            yield
        finally:
            with self._lock:
                del self._watches[key]

    def _run(self) -> None:
        while True:
            time.sleep(POLL_S)
            now = time.monotonic()
            with self._lock:
                overdue = [w for w in self._watches.values() if w.deadline <= now]
            if overdue:
                self._fire(overdue[0])

    def _fire(self, watch: _Watch) -> None:
        """Condemn the overdue file (unless the mount is to blame) and kill this process."""
        limit = watch.limits.file_timeout_s
        try:
            probe_alive(watch.source_root, min(watch.limits.mount_timeout_s, PROBE_S))
            watch.notes.condemn(
                watch.pos,
                f"took longer than --file-timeout={limit:g}s; the worker process was restarted "
                "to stop it",
            )
            log.error("%s: no result after %g s; restarting this worker", watch.path, limit)
        except (MountNotAliveError, OSError) as exc:
            # dead, hung or gone: not the file's fault; the rerun's mount check stops the run
            log.error("%s; restarting this worker", exc)
        finally:  # whatever happened above, the overdue file must be stopped
            os.kill(os.getpid(), signal.SIGKILL)


_WATCHDOG: Watchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def watchdog() -> Watchdog:
    """This process's watchdog, started on first use."""
    global _WATCHDOG
    with _WATCHDOG_LOCK:
        if _WATCHDOG is None:
            _WATCHDOG = Watchdog()
        return _WATCHDOG
