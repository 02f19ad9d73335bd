"""Files of an on-demand Valohai input downloaded on a worker (no Dask import): streamed and
hashed as they arrive, a few at a time per worker process, transient failures (5xx, a reset
connection, a body cut short) retried with backoff, and an expired pre-signed URL (403) renewed
through Valohai's ``input_request`` endpoint instead of failing the file."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mountproc._records import FileEntry, RemoteFiles
from mountproc._shard.reading import CHUNK, SourceRead

log = logging.getLogger(__name__)

IN_FLIGHT = 4
"""Downloads in flight at most per worker process, whatever its threads and shards."""
INLINE_MAX = 16 * 1024 * 1024
"""A downloaded file up to this size is kept in memory; a larger one streams to a file in the
shard's scratch: memory stays below (IN_FLIGHT + files read ahead) x INLINE_MAX."""
ATTEMPTS = 5
"""Attempts at a download that fails transiently (5xx, 429, a reset or cut-off connection)."""
RENEWALS = 3
"""Times one file's URL is renewed after a 403 before the file fails."""
TIMEOUT_S = 60.0
"""Seconds a connection may stay silent."""

_SLOTS = threading.BoundedSemaphore(IN_FLIGHT)


class DownloadError(Exception):
    """A file that could not be downloaded: the message is its reason in the manifest."""


class _Transient(Exception):
    """A failure that another attempt may not have."""


class _Expired(Exception):
    """The data store refused the URL (403): a pre-signed URL that expired."""


_RETRYING = Retrying(
    stop=stop_after_attempt(ATTEMPTS),
    wait=wait_exponential(multiplier=0.25, max=8.0),
    retry=retry_if_exception_type(_Transient),
    reraise=True,
)
"""One policy for every call (see ``worker._RETRYING`` for why not one per call)."""


class _Urls:
    """URLs renewed in this process, by input and file name: later shards start from them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._renewed: dict[tuple[str | None, str | None, str], str] = {}

    def current(self, remote: RemoteFiles, name: str, given: str) -> str:
        """The newest URL known for the file."""
        with self._lock:
            return self._renewed.get(_key(remote, name), given)

    def renew(self, remote: RemoteFiles, name: str, stale: str) -> None:
        """Ask for fresh URLs of the whole input, unless another thread already got them."""
        with self._lock:
            if self._renewed.get(_key(remote, name), stale) != stale:
                return
            fresh = _RETRYING(request_urls, remote)
            self._renewed.update({_key(remote, n): u for n, u in fresh.items()})
        log.info("renewed the URLs of %d files of input %s", len(fresh), remote.input_name)


def _key(remote: RemoteFiles, name: str) -> tuple[str | None, str | None, str]:
    """A file of an input of an execution (the endpoint names the execution)."""
    return remote.renew_url, remote.input_id, name


_URLS = _Urls()


def download(remote: RemoteFiles, pos: int, entry: FileEntry, spill_dir: Path) -> SourceRead:
    """Download the ``pos``-th file of a shard; raise ``DownloadError`` with its reason."""
    url = _URLS.current(remote, entry.path, remote.urls[pos])
    spill = spill_dir / f"download-{pos:06d}"
    for renewal in range(RENEWALS + 1):
        try:
            with _SLOTS:
                return _RETRYING(_fetch, url, entry, spill)
        except _Transient as exc:
            raise DownloadError(f"{exc} (still failing after {ATTEMPTS} attempts)") from None
        except _Expired:
            if renewal < RENEWALS:
                url = _renewed(remote, entry.path, url)
    raise DownloadError(f"the URL was still refused (HTTP 403) after {RENEWALS} renewals")


def _renewed(remote: RemoteFiles, name: str, stale: str) -> str:
    """A fresh URL for the file whose URL ``stale`` was refused."""
    if remote.renew_url is None:
        raise DownloadError(
            "the URL was refused (HTTP 403: expired?) and api.json gives no input_request "
            "endpoint to renew it"
        )
    try:
        _URLS.renew(remote, name, stale)
    except _Transient as exc:
        raise DownloadError(f"renewing the URL failed: {exc}") from None
    fresh = _URLS.current(remote, name, stale)
    if fresh == stale:
        raise DownloadError("the URL was refused (HTTP 403) and input_request gave no new one")
    return fresh


def _fetch(url: str, entry: FileEntry, spill: Path) -> SourceRead:
    """One attempt: stream the body, hashing it, into memory or ``spill``."""
    response = _open(urllib.request.Request(url))
    with response:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != entry.size:
            raise DownloadError(_size_reason(f"{length} bytes", entry.size))
        sink: IO[bytes] = io.BytesIO() if entry.size <= INLINE_MAX else spill.open("wb")
        with sink:
            digest, got = _stream(response, sink, entry.size)
            data = sink.getvalue() if isinstance(sink, io.BytesIO) else None
    if got != entry.size:
        what = f"{got} bytes" if got < entry.size else f"more than {entry.size} bytes"
        raise DownloadError(_size_reason(what, entry.size))
    path = None if data is not None else spill
    return SourceRead(data, digest, got, entry.mtime_ns, False, path=path)


def _size_reason(got: str, listed: int) -> str:
    return f"size differs from the input's entry: {got}, inputs.json says {listed}"


def _open(request: urllib.request.Request) -> http.client.HTTPResponse:
    """The response to ``request``; its failures sorted into transient, expired and final."""
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (401, 403):
            raise _Expired() from None
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Transient(_why(exc)) from None
    return response


def _stream(response: http.client.HTTPResponse, sink: IO[bytes], size: int) -> tuple[str, int]:
    """Copy the body into ``sink``; its sha256 and length (a body longer than ``size`` is cut
    off just past it: a file that is not the one listed is never read whole)."""
    sha, got = hashlib.sha256(), 0
    try:
        while got <= size and (chunk := response.read(min(CHUNK, size + 1 - got))):
            sha.update(chunk)
            sink.write(chunk)
            got += len(chunk)
    except (OSError, http.client.HTTPException) as exc:  # reset, cut short, silent too long
        raise _Transient(f"the download broke off after {got} bytes: {_why(exc)}") from None
    return sha.hexdigest(), got


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, BaseException) else exc
    return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__


def request_urls(remote: RemoteFiles) -> dict[str, str]:
    """Fresh URLs of the input's files from ``input_request``, by file name."""
    assert remote.renew_url is not None
    query = urllib.parse.urlencode({"input": remote.input_id, "inputs": remote.input_id})
    sep = "&" if "?" in remote.renew_url else "?"
    request = urllib.request.Request(
        remote.renew_url + sep + query,
        method=remote.renew_method,
        headers=dict(remote.renew_headers),
    )
    try:
        with _open(request) as response:
            answer = json.loads(response.read())
    except _Expired:
        raise DownloadError("Valohai's input_request refused this execution's token") from None
    return _urls_of(answer, remote.input_id)


def _urls_of(answer: Any, input_id: str | None) -> dict[str, str]:
    """``{filename: url}`` from input_request's answer (only the files of ``input_id``)."""
    try:
        return {
            str(f["filename"]): str(f["url"])
            for entry in answer
            for f in entry["files"]
            if input_id is None or str(f.get("input_id", input_id)) == input_id
        }
    except (KeyError, TypeError) as exc:
        raise DownloadError(f"input_request answered unexpectedly ({exc!r})") from None
