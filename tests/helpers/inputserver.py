"""A stand-in for Valohai's data store and API on 127.0.0.1: files served under signed-like URLs
that expire (after a number of uses, a number of seconds, or once the store has served a number
of downloads), faults on demand (a 500, a connection reset in the middle of a body), and the
``input_request`` endpoint that checks the execution token and issues fresh URLs; with
``inputs.json`` and ``api.json`` written as Valohai writes them."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN = "tok-1234"
INPUT_ID = "0190-input-id"
EXECUTION = "0190-execution"


@dataclass
class _Signed:
    name: str
    issued: float
    uses: int = 0


@dataclass
class Store:
    """The files, the URLs signed for them, and what happened (counted per file name)."""

    files: dict[str, bytes]
    uses: int | None = None  # each URL serves this many downloads, then answers 403
    ttl_s: float | None = None  # each URL answers 403 this long after it was issued
    expire_all_after: int | None = None  # after this many downloads every URL issued expires
    faults: dict[str, list[str]] = field(default_factory=dict)  # name -> "500" | "reset"
    no_length: bool = False  # bodies without Content-Length: they end when the connection does
    served: Counter[str] = field(default_factory=Counter)  # whole bodies sent
    requests: Counter[str] = field(default_factory=Counter)  # GETs of a file, any answer
    refused: Counter[str] = field(default_factory=Counter)  # 403s
    renewals: int = 0
    bad_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    signed: dict[str, _Signed] = field(default_factory=dict)
    base: str = ""

    def sign(self, name: str) -> str:
        """A fresh URL for ``name``."""
        sig = secrets.token_hex(8)
        with self.lock:
            self.signed[sig] = _Signed(name, time.monotonic())
        return f"{self.base}/store/{urllib.parse.quote(name)}?sig={sig}"

    def admit(self, name: str, sig: str) -> bool:
        """Whether the URL is still good (counting this use)."""
        with self.lock:
            self.requests[name] += 1
            signed = self.signed.get(sig)
            expired = (
                signed is None
                or signed.name != name
                or (self.uses is not None and signed.uses >= self.uses)
                or (self.ttl_s is not None and time.monotonic() - signed.issued > self.ttl_s)
            )
            if expired or signed is None:
                self.refused[name] += 1
                return False
            signed.uses += 1
            return True

    def fault(self, name: str) -> str | None:
        """The next fault queued for ``name``, if any."""
        with self.lock:
            queued = self.faults.get(name) or []
            return queued.pop(0) if queued else None

    def delivered(self, name: str) -> None:
        """Count a whole body; expire every URL once ``expire_all_after`` bodies went out."""
        with self.lock:
            self.served[name] += 1
            if sum(self.served.values()) == self.expire_all_after:
                self.signed.clear()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the counters instead."""

    def do_GET(self) -> None:
        store = self.server.store
        url = urllib.parse.urlsplit(self.path)
        name = urllib.parse.unquote(url.path.removeprefix("/store/"))
        sig = urllib.parse.parse_qs(url.query).get("sig", [""])[0]
        if name not in store.files or not store.admit(name, sig):
            self._answer(403 if name in store.files else 404, b"<Error>AccessDenied</Error>")
            return
        body = store.files[name]
        fault = store.fault(name)
        if fault == "500":
            self._answer(500, b"internal error")
        elif fault == "reset":
            self._reset_midway(body)
        else:
            self._answer(200, body)
            store.delivered(name)

    def do_POST(self) -> None:
        store = self.server.store
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if self.headers.get("Authorization") != f"Execution-Token {TOKEN}":
            with store.lock:
                store.bad_tokens += 1
            self._answer(403, b'{"detail": "bad token"}')
            return
        if url.path != "/api/v0/executions/request-input-data/" or INPUT_ID not in query.get(
            "input", []
        ) + query.get("inputs", []):
            self._answer(404, b"{}")
            return
        with store.lock:
            store.renewals += 1
        files = [_renewed(name, store.sign(name)) for name in store.files]
        self._answer(200, json.dumps([{"name": "images", "files": files}]).encode())

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        if not (self.server.store.no_length and code == 200):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset_midway(self, body: bytes) -> None:
        """Headers and half the body, then a TCP reset."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


def _renewed(name: str, url: str) -> dict[str, Any]:
    return {
        "filename": name,
        "original_uri": f"s3://bucket/images/{name}",
        "url": url,
        "input_id": INPUT_ID,
        "metadata": [],
        "download_intent": "on-demand",
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: Store


class InputServer:
    """The store and the API, served on 127.0.0.1 in a thread; ``with`` starts and stops it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.store = store
        store.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        # one execution per server: URLs a worker renewed for another never carry over
        self.execution = f"{EXECUTION}-{secrets.token_hex(4)}"

    def __enter__(self) -> InputServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def request_url(self) -> str:
        """The ``input_request`` endpoint, as ``api.json`` gives it."""
        base = self.store.base
        return f"{base}/api/v0/executions/request-input-data/?execution={self.execution}"


def write_valohai_config(
    config: Path,
    server: InputServer,
    name: str = "images",
    sizes: Mapping[str, int] | None = None,
    intent: str = "on-demand",
    inputs_dir: Path = Path("/valohai/inputs"),
) -> None:
    """``inputs.json`` (the input's files, with fresh URLs) and ``api.json``, as Valohai writes
    them; ``sizes`` overrides the size listed for some files."""
    config.mkdir(parents=True, exist_ok=True)
    files = [
        _entry(rel, (sizes or {}).get(rel, len(data)), server, name, intent, inputs_dir)
        for rel, data in server.store.files.items()
    ]
    inputs = {name: {"input_id": INPUT_ID, "files": files}}
    (config / "inputs.json").write_text(json.dumps(inputs, indent=2))
    api = {
        "input_request": {
            "method": "POST",
            "url": server.request_url,
            "headers": {"Authorization": f"Execution-Token {TOKEN}"},
        }
    }
    (config / "api.json").write_text(json.dumps(api))


def _entry(
    rel: str, size: int, server: InputServer, name: str, intent: str, inputs_dir: Path
) -> dict[str, Any]:
    datum = f"datum://{hashlib.sha256(rel.encode()).hexdigest()[:16]}"
    return {
        "name": rel,
        "path": str(inputs_dir / name / rel),
        "size": size,
        "storage_uri": server.store.sign(rel),
        "uri": datum,
        "datum_id": datum.removeprefix("datum://"),
        "download_intent": intent,
        "input_id": INPUT_ID,
        "metadata": [],
    }


def iter_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """Every file under ``root``: its path relative to it and its bytes."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix(), path.read_bytes()
