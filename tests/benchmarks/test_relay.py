"""The latency relays (``benchmarks/relay.py`` and its compiled twin ``relay.c``): every round
trip through one costs at least twice its delay, yet chunks in flight are not serialised behind
each other's delays."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from benchmarks import relay

DELAY_MS = 20.0
TIMEOUT_S = 10.0


@contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that sends back whatever it gets; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT_S)

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(timeout=TIMEOUT_S)
        assert not thread.is_alive(), "the echo server did not see the relay close"


@pytest.fixture(scope="module", params=["python", "compiled"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The relay's command: the Python script, or ``relay.c`` built as the benchmarks build it."""
    if request.param == "python":
        return [sys.executable, str(relay.SCRIPT)]
    command, which = relay.command(tmp_path_factory.mktemp("relay"))
    if command[0] == sys.executable:
        pytest.skip(f"no compiled relay here: {which}")
    return command


@contextmanager
def relayed(program: list[str], delay_ms: float) -> Iterator[subprocess.Popen[bytes]]:
    """The relay as ssh runs it (a ProxyCommand: stdin and stdout) to an echo server."""
    with echo_server() as port:
        cmd = [*program, "--delay-ms", str(delay_ms), "127.0.0.1", str(port)]
        with subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        ) as proc:
            try:
                yield proc
            finally:
                assert proc.stdin is not None
                proc.stdin.close()  # ssh going away: the relay closes its side and exits
                assert proc.wait(timeout=TIMEOUT_S) == 0


def read_exactly(proc: subprocess.Popen[bytes], size: int) -> bytes:
    """``size`` bytes from the relay's stdout."""
    assert proc.stdout is not None
    got = b""
    while len(got) < size:
        data = proc.stdout.read(size - len(got))
        assert data, "the relay closed its output early"
        got += data
    return got


def round_trip(proc: subprocess.Popen[bytes], message: bytes) -> float:
    """Seconds from writing ``message`` to reading its echo back."""
    assert proc.stdin is not None
    start = time.perf_counter()
    proc.stdin.write(message)
    assert read_exactly(proc, len(message)) == message
    return time.perf_counter() - start


@pytest.mark.parametrize("delay_ms", [0.0, DELAY_MS])
def test_a_round_trip_takes_at_least_twice_the_delay(program: list[str], delay_ms: float) -> None:
    with relayed(program, delay_ms) as proc:
        round_trip(proc, b"warm-up")
        times = [round_trip(proc, b"ping %d" % i) for i in range(10)]
    seconds = statistics.median(times)
    assert seconds >= 2 * delay_ms / 1000
    if delay_ms == 0:  # the relay itself adds little: the delay measured above is the delay's
        assert seconds < DELAY_MS / 1000


def test_chunks_in_flight_overlap_their_delays(program: list[str]) -> None:
    # 40 messages written 2 ms apart: each is a chunk of its own; a relay sleeping per chunk
    # would take 40 x 2 x 20 ms for the last echo, an overlapping one about 40 x 2 + 2 x 20 ms
    messages = [b"message %02d;" % i for i in range(40)]
    with relayed(program, DELAY_MS) as proc:
        assert proc.stdin is not None
        start = time.perf_counter()
        for message in messages:
            proc.stdin.write(message)
            time.sleep(0.002)
        assert read_exactly(proc, sum(map(len, messages))) == b"".join(messages)
        seconds = time.perf_counter() - start
    assert seconds < len(messages) * 2 * DELAY_MS / 1000 / 2


def test_bulk_bytes_pass_intact_at_speed(program: list[str]) -> None:
    blob = bytes(range(256)) * 4096 * 8  # 8 MiB
    with relayed(program, DELAY_MS) as proc:
        assert proc.stdin is not None
        start = time.perf_counter()
        writer = threading.Thread(target=proc.stdin.write, args=(blob,))
        writer.start()
        assert read_exactly(proc, len(blob)) == blob
        writer.join(timeout=TIMEOUT_S)
        seconds = time.perf_counter() - start
    assert seconds < 5.0  # at 256 KiB per 20 ms chunk, serially, it would take 1.3 s at least


def test_the_server_closing_ends_the_relay_after_what_it_sent(program: list[str]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT_S)
    port = listener.getsockname()[1]
    cmd = [*program, "--delay-ms", str(DELAY_MS), "127.0.0.1", str(port)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        with listener, listener.accept()[0] as conn:
            conn.sendall(b"last words")
        assert proc.stdout is not None
        assert proc.stdout.read() == b"last words"  # then the end of its output
        assert proc.wait(timeout=TIMEOUT_S) == 0


def test_an_unreachable_server_is_one_line_and_a_failure(program: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    cmd = [*program, "127.0.0.1", str(port)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode != 0
    assert "refused" in done.stderr.lower()
