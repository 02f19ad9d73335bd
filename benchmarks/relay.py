"""A relay that gives a loopback connection a network's latency: every byte is held a fixed time.

Used as ssh's ``ProxyCommand``: it connects to HOST:PORT and relays its stdin to that socket and
the socket to its stdout, each chunk released ``--delay-ms`` after it was read, in each direction
(so a round trip costs at least twice the delay). Chunks are timestamped when read and released
at that time plus the delay by a writer of their own, so reading never waits for the delay: the
throughput stays that of the link, only the latency grows, as on a long but wide network.

    python benchmarks/relay.py --delay-ms 0.5 HOST PORT
    ssh -o 'ProxyCommand=python benchmarks/relay.py --delay-ms 0.5 %h %p' ...

It exits when either side closes (after passing on what it holds) or fails.

``relay.c`` is the same relay compiled; ``command`` builds it where a C compiler is found (the
benchmarks use it: this Python relay spends CPU on the same cores as the run it measures, which a
real network's latency does not).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CHUNK = 256 * 1024
SCRIPT = Path(__file__).resolve()
SOURCE = SCRIPT.with_name("relay.c")

Read = Callable[[int], bytes]
Write = Callable[[bytes], object]


class DelayLine:
    """Bytes from ``read`` passed to ``write`` ``delay`` seconds after they were read."""

    def __init__(self, read: Read, write: Write, close: Callable[[], object], delay: float) -> None:
        self._read, self._write, self._close, self._delay = read, write, close, delay
        self.done = threading.Event()  # set once the writer has passed on the end, or failed
        self._held: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._reader, daemon=True),
            threading.Thread(target=self._writer, daemon=True),
        ]

    def start(self) -> DelayLine:
        """Start reading and writing."""
        for thread in self.threads:
            thread.start()
        return self

    def _reader(self) -> None:
        try:
            while data := self._read(CHUNK):
                self._held.put((time.monotonic() + self._delay, data))
        except OSError:
            pass
        self._held.put((time.monotonic() + self._delay, b""))  # the end, after what was read

    def _writer(self) -> None:
        try:
            while True:
                due, data = self._held.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    break
                self._write(data)
        except OSError:
            pass
        finally:
            self._close()
            self.done.set()


def _write_fd(fd: int) -> Write:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def _shut(sock: socket.socket) -> Callable[[], None]:
    def shut() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    return shut


def relay(host: str, port: int, delay: float, stdin: int = 0, stdout: int = 1) -> None:
    """Relay the file descriptors ``stdin``/``stdout`` to and from ``host:port``, delayed."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lines = [
        DelayLine(lambda n: os.read(stdin, n), sock.sendall, _shut(sock), delay),
        DelayLine(sock.recv, _write_fd(stdout), lambda: os.close(stdout), delay),
    ]
    for line in lines:
        line.start()
    # the server closing ends the relay (what it sent is passed on first); ssh closing its side
    # is passed on to the server, which then closes
    lines[1].done.wait()
    lines[0].done.wait(timeout=delay + 1.0)
    sock.close()


@functools.cache
def command(build_dir: Path) -> tuple[list[str], str]:
    """The relay's command (without its arguments) and which one it is: ``relay.c`` compiled
    into ``build_dir`` (again when the source is newer) where ``cc`` is found and compiles it,
    else this script. Looked up once per directory: every relayed mount asks."""
    python = [sys.executable, str(SCRIPT)]
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return python, "the Python relay (no C compiler found)"
    binary = build_dir / "relay"
    if not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime:
        build_dir.mkdir(parents=True, exist_ok=True)
        building = [cc, "-O2", "-pthread", "-o", str(binary), str(SOURCE)]
        done = subprocess.run(building, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1:] or ["failed"]
            return python, f"the Python relay (relay.c did not compile: {why[0]})"
    return [str(binary)], "the compiled relay (relay.c)"


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and relay until one side closes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.5, help="one-way delay (ms)")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    relay(args.host, args.port, args.delay_ms / 1000.0)


if __name__ == "__main__":
    main()
