"""Tests of _shard.watchdog: the notes a shard keeps across attempts, and the per-process
watchdog that kills a real worker process whose file overruns --file-timeout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from mountproc._shard.watchdog import DEATHS_TO_CONDEMN, ShardNotes

INDEX = 4

DIE_WITH_FILE_IN_FLIGHT = """
import os, sys
from pathlib import Path

import pytest
from mountproc._shard.watchdog import ShardNotes

ShardNotes(Path(sys.argv[1]), int(sys.argv[2])).start(int(sys.argv[3]))
os._exit(3)
"""

WATCHED_FILE = """
import sys, time
from pathlib import Path

import pytest
from mountproc._records import Limits
from mountproc._shard.watchdog import ShardNotes, watchdog

work, index, source, timeout, block_s, after_s, mount = sys.argv[1:]
if mount == "dead":  # a dead mount is injected: a hung sshfs is covered by test_sick_mounts
    import mountproc._shard.watchdog
    from mountproc._mounts.table import MountNotAliveError

    def dead(path, timeout):
        raise MountNotAliveError(f"source {path} is not answering (injected)")

    mountproc._shard.watchdog.probe_alive = dead
notes = ShardNotes(Path(work), int(index))
with watchdog().file(notes, 2, "slow.jpg", source, Limits(float(timeout), 2.0)):
    print("started", flush=True)
    time.sleep(float(block_s))
print("finished", flush=True)
time.sleep(float(after_s))
notes.close(done=False)
"""


def _die_with_file_in_flight(work: Path, pos: int, index: int = INDEX) -> None:
    """A real process notes the file at ``pos`` in flight and dies without closing its notes."""
    args = [sys.executable, "-c", DIE_WITH_FILE_IN_FLIGHT, str(work), str(index), str(pos)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr


def _run_watched(
    work: Path,
    source: Path,
    *,
    timeout: float,
    block_s: float,
    after_s: float = 0.0,
    mount: str = "alive",
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run one file under the watchdog in a real child process; return it and its run time."""
    args = [str(work), str(INDEX), str(source), str(timeout), str(block_s), str(after_s), mount]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", WATCHED_FILE, *args], capture_output=True, text=True, timeout=30
    )
    return done, time.monotonic() - started


# --- ShardNotes --------------------------------------------------------------------------------


def test_recover_on_a_fresh_dir(tmp_path: Path) -> None:
    """No earlier attempt: nothing condemned, and nothing written."""
    assert ShardNotes(tmp_path, INDEX).recover() == {}
    assert list(tmp_path.iterdir()) == []


def test_start_notes_the_position_in_flight(tmp_path: Path) -> None:
    """The in-flight note holds the latest position only, however long the earlier one."""
    notes = ShardNotes(tmp_path, INDEX)
    notes.start(123456)
    notes.start(7)
    assert notes.inflight.name == f"{INDEX:06d}.inflight"
    assert notes.inflight.read_text().strip() == "7"
    notes.close(done=False)
    assert not notes.inflight.exists()


def test_one_death_is_a_strike_not_a_verdict(tmp_path: Path) -> None:
    """A process that died with a file in flight once: the file runs again."""
    _die_with_file_in_flight(tmp_path, 3)
    notes = ShardNotes(tmp_path, INDEX)
    assert notes.inflight.exists()
    assert notes.recover() == {}
    assert not notes.inflight.exists()
    assert json.loads(notes.verdicts.read_text())["strikes"] == {"3": 1}


def test_second_death_on_the_same_file_condemns_it(tmp_path: Path) -> None:
    """Two deaths with the same file in flight fail that file on every later attempt."""
    assert DEATHS_TO_CONDEMN == 2
    for _ in range(2):
        _die_with_file_in_flight(tmp_path, 3)
        condemned = ShardNotes(tmp_path, INDEX).recover()
    assert list(condemned) == [3]
    assert "died 2 times" in condemned[3]
    assert ShardNotes(tmp_path, INDEX).recover() == condemned  # and it stays condemned


def test_deaths_on_different_files_condemn_neither(tmp_path: Path) -> None:
    """Strikes count per file position; notes count per shard."""
    _die_with_file_in_flight(tmp_path, 3)
    assert ShardNotes(tmp_path, INDEX).recover() == {}
    _die_with_file_in_flight(tmp_path, 5)
    assert ShardNotes(tmp_path, INDEX).recover() == {}
    _die_with_file_in_flight(tmp_path, 3, index=INDEX + 1)
    assert ShardNotes(tmp_path, INDEX + 1).recover() == {}


def test_condemn_is_recovered_by_a_later_attempt(tmp_path: Path) -> None:
    """A condemned file comes back with its reason, for this shard only."""
    ShardNotes(tmp_path, INDEX).condemn(5, "took longer than --file-timeout=1s")
    ShardNotes(tmp_path, INDEX).condemn(6, "also too slow")
    assert ShardNotes(tmp_path, INDEX).recover() == {
        5: "took longer than --file-timeout=1s",
        6: "also too slow",
    }
    assert ShardNotes(tmp_path, INDEX + 1).recover() == {}


def test_close_not_done_keeps_the_verdicts(tmp_path: Path) -> None:
    """An attempt that ends without finishing drops its in-flight note, not the verdicts."""
    notes = ShardNotes(tmp_path, INDEX)
    notes.start(1)
    notes.condemn(2, "too slow")
    notes.close(done=False)
    assert not notes.inflight.exists()
    assert notes.verdicts.exists()
    assert ShardNotes(tmp_path, INDEX).recover() == {2: "too slow"}  # no strike for 1


def test_close_done_drops_every_note(tmp_path: Path) -> None:
    """A finished shard leaves no notes behind."""
    notes = ShardNotes(tmp_path, INDEX)
    notes.start(1)
    notes.condemn(2, "too slow")
    notes.close(done=True)
    assert list(tmp_path.iterdir()) == []
    assert ShardNotes(tmp_path, INDEX).recover() == {}


# --- the watchdog in a real process ------------------------------------------------------------


def test_overrunning_file_kills_its_process_and_is_condemned(tmp_path: Path) -> None:
    """A file still running after --file-timeout gets its process SIGKILLed within seconds, and
    the next attempt finds it condemned for the time limit."""
    done, elapsed = _run_watched(tmp_path, tmp_path, timeout=0.5, block_s=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert elapsed < 5.0
    assert done.stdout == "started\n"
    assert "slow.jpg: no result after 0.5 s" in done.stderr
    condemned = ShardNotes(tmp_path, INDEX).recover()
    assert list(condemned) == [2]
    assert "--file-timeout=0.5s" in condemned[2]
    assert "died" not in condemned[2]


def test_overrun_on_a_dead_mount_kills_without_condemning(tmp_path: Path) -> None:
    """When the mount is to blame the process is still killed, but the file is not failed."""
    done, elapsed = _run_watched(tmp_path, tmp_path, timeout=0.5, block_s=60, mount="dead")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert elapsed < 5.0
    assert "is not answering (injected); restarting this worker" in done.stderr
    assert ShardNotes(tmp_path, INDEX).recover() == {}  # one strike, as for any death


def test_no_time_limit_registers_no_watch(tmp_path: Path) -> None:
    """With file_timeout_s=0 a block runs to completion, however long past two watchdog polls."""
    done, _ = _run_watched(tmp_path, tmp_path, timeout=0, block_s=1.2)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started\nfinished\n"
    assert ShardNotes(tmp_path, INDEX).recover() == {}


def test_finished_file_is_no_longer_watched(tmp_path: Path) -> None:
    """A file done in time is unwatched: its process lives on well past the deadline."""
    done, _ = _run_watched(tmp_path, tmp_path, timeout=0.2, block_s=0, after_s=1.2)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started\nfinished\n"
    assert ShardNotes(tmp_path, INDEX).recover() == {}


def test_overrun_with_the_source_gone_still_kills(tmp_path: Path) -> None:
    """A file overrunning its limit is stopped even when the source root has vanished."""
    done, elapsed = _run_watched(tmp_path, tmp_path / "gone", timeout=0.5, block_s=2.0)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert elapsed < 2.0
