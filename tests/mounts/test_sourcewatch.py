"""Tests of _mounts.sourcewatch: a stage runs while the source is probed in the background,
and a dead source ends the stage within bounded time even when the stage is blocked."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest
from helpers.netfs import wait_until

from mountproc._errors import SourceLostError
from mountproc._mounts import sourcewatch as _sourcewatch
from mountproc._mounts.sourcewatch import SourceWatch
from mountproc._mounts.table import MountNotAliveError, probe_alive


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths the watch probes, recorded around the real probe."""
    seen: list[Path] = []

    def recording(path: Path, timeout: float) -> None:
        seen.append(path)
        probe_alive(path, timeout)

    monkeypatch.setattr(_sourcewatch, "probe_alive", recording)
    return seen


@pytest.fixture
def dead_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe finds the source dead (injected: a real dead sshfs is in test_sick_mounts)."""

    def dead(path: Path, timeout: float) -> None:
        raise MountNotAliveError(f"source {path} is not answering (ENOTCONN: injected)")

    monkeypatch.setattr(_sourcewatch, "probe_alive", dead)


def test_run_returns_the_value(tmp_path: Path) -> None:
    """A stage that returns gives its value."""
    with SourceWatch(tmp_path, 5.0, "the listing") as watch:
        assert watch.run(lambda: 42) == 42
    assert watch.lost is None


def test_run_reraises_the_error(tmp_path: Path) -> None:
    """A stage that raises raises that very error."""
    error = ValueError("listing broke")

    def fail() -> None:
        raise error

    with (
        SourceWatch(tmp_path, 5.0, "the listing") as watch,
        pytest.raises(ValueError, match="listing broke") as info,
    ):
        watch.run(fail)
    assert info.value is error


def test_live_source_is_never_lost(tmp_path: Path, probes: list[Path]) -> None:
    """Probing a live source every 0.2 s through a 1 s stage never finds it lost."""
    lost = threading.Event()

    def stage() -> str:
        time.sleep(1.0)  # the stage's own work, not a wait for the watch
        return "done"

    with SourceWatch(tmp_path, 0.2, "the run", on_lost=lost.set) as watch:
        assert watch.run(stage) == "done"
        watch.check()
    assert len(probes) >= 3
    assert set(probes) == {tmp_path}
    assert watch.lost is None
    assert not lost.is_set()


def test_exit_stops_the_probes(tmp_path: Path, probes: list[Path]) -> None:
    """Leaving the block stops the background thread."""
    with SourceWatch(tmp_path, 0.05, "the run") as watch:
        wait_until(lambda: len(probes) >= 2, 5.0, "the source was probed twice")
    watch._thread.join(5.0)
    assert not watch._thread.is_alive()
    assert watch.lost is None


def test_dead_source_is_lost_in_the_background(tmp_path: Path, dead_mount: None) -> None:
    """A dead source calls on_lost and makes check() raise, naming the stage."""
    lost = threading.Event()
    with SourceWatch(tmp_path, 0.1, "the run", on_lost=lost.set) as watch:
        assert lost.wait(5.0)
        with pytest.raises(SourceLostError, match=r"\(during the run\)$") as info:
            watch.check()
    assert "is not answering (ENOTCONN: injected)" in str(info.value)
    assert watch.lost is info.value
    watch._thread.join(5.0)
    assert not watch._thread.is_alive()  # one verdict is enough: the thread is done


def test_dead_source_ends_a_blocked_stage(tmp_path: Path, dead_mount: None) -> None:
    """A stage blocked forever (as in scandir on a hung mount) is abandoned once the source is
    found dead: run() raises SourceLostError within bounded time."""
    release = threading.Event()
    started = time.monotonic()
    try:
        with (
            SourceWatch(tmp_path, 0.1, "the listing") as watch,
            pytest.raises(SourceLostError, match="during the listing"),
        ):
            watch.run(release.wait)
    finally:
        release.set()
    assert time.monotonic() - started < 2.0


def test_probe_names_the_first_error_seen(tmp_path: Path, dead_mount: None) -> None:
    """A stage that saw an error of a dead mount probes at once; the error is in the message."""
    watch = SourceWatch(tmp_path, 1.0, "the listing")
    seen = OSError(errno.ENOTCONN, "Transport endpoint is not connected")
    with pytest.raises(SourceLostError, match=r"first seen as .*Transport endpoint") as info:
        watch.probe(seen)
    assert "(during the listing; first seen as" in str(info.value)
    assert watch.lost is info.value


def test_probe_of_a_live_source_passes(tmp_path: Path) -> None:
    """A probe of a live source raises nothing and records nothing."""
    watch = SourceWatch(tmp_path, 1.0, "the listing")
    watch.probe(OSError(errno.EIO, "I/O error"))
    watch.check()
    assert watch.lost is None


def test_vanished_source_is_lost(tmp_path: Path) -> None:
    """A source directory that disappears (its mount gone from under a subdirectory) is lost."""
    source = tmp_path / "mnt" / "images"
    source.mkdir(parents=True)
    lost = threading.Event()
    with SourceWatch(source, 0.1, "the run", on_lost=lost.set) as watch:
        (tmp_path / "mnt").rename(tmp_path / "elsewhere")
        wait_until(
            lambda: lost.is_set() or not watch._thread.is_alive(), 5.0, "a verdict on the source"
        )
        assert lost.is_set()
        with pytest.raises(SourceLostError, match="during the run"):
            watch.check()
