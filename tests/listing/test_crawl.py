"""Tests of the parallel crawl: over any executor, the same rows in the same order as the serial
crawl, and the same errors handed to ``on_sick`` at the same places."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
from helpers import make_hostile_tree
from helpers.netfs import SshfsMount, sshfs_available
from hypothesis import given, settings
from hypothesis import strategies as st

from mountproc._listing import crawl as _crawl
from mountproc._listing import listing as _listing
from mountproc._listing.crawl import Task, ordered_walk
from mountproc._listing.listing import Listed, Patterns, crawl, write_listing
from mountproc._records import Kind

ALL = Patterns([], [])
JPG = Patterns(["*.jpg"], ["cache", "*.skip", "keep/raw/*"])
PATTERNS = {"all": ALL, "jpg": JPG}
NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")
NON_UTF8_DIR = os.fsdecode(b"r\xe9sum\xe9 dir")
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
NO_SSHFS = sshfs_available()
NO_CACHE = ("dir_cache=no", "attr_timeout=0", "entry_timeout=0")

Event = tuple[Any, ...]


def events(
    root: Path, patterns: Patterns, executor: Executor | None = None, window: int = 64
) -> list[Event]:
    """Rows and the errors handed to ``on_sick``, in the order the caller saw them."""
    out: list[Event] = []

    def on_sick(exc: OSError) -> None:
        out.append(("sick", type(exc), exc.errno, exc.strerror, exc.filename))

    for row in crawl(root, patterns, on_sick, executor=executor, window=window):
        out.append(("row", row))
    return out


def rows_of(found: list[Event]) -> list[Listed]:
    return [e[1] for e in found if e[0] == "row"]


class RecordingPool(ThreadPoolExecutor):
    """A real thread pool that keeps what was submitted, and the most tasks ever unfinished."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted: list[tuple[Callable[..., Any], Future[Any]]] = []
        self.peak = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.submitted.append((fn, future))
        recent = self.submitted[-200:]  # the window is far smaller: older ones are all done
        self.peak = max(self.peak, sum(not f.done() for _, f in recent))
        return future


def in_background(call: Callable[[], Any]) -> Future[Any]:
    """Run ``call`` in a daemon thread, so that a call blocked on a mount cannot hang the test."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


# --- trees -------------------------------------------------------------------------------------


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def make_odd(root: Path) -> None:
    """Odd names, every kind of entry, empty and excluded directories."""
    write(
        root,
        {
            "a.b.c.jpg": b"1",
            "a b.jpg": b"22",
            " lead.jpg": b"",
            "line\nbreak.jpg": b"333",
            "Upper.JPG": b"4444",
            "notes.txt": b"n",
            NON_UTF8: b"jpeg",
            f"{NON_UTF8_DIR}/x.jpg": b"x",
            "cache/hidden.jpg": b"h",
            "keep/raw/b.jpg": b"b",
            "keep/cache/y.jpg": b"y",
            "keep/c.jpg": b"c",
            "old.skip/d.jpg": b"d",
        },
    )
    (root / "empty").mkdir()
    (root / "e1" / "e2" / "e3").mkdir(parents=True)
    (root / "link.jpg").symlink_to(root / "a.b.c.jpg")
    (root / "link-dir").symlink_to(root / "keep", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "gone.jpg").symlink_to(root / "nowhere.jpg")
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "keep" / "pipe")
    with contextlib.suppress(PermissionError):  # needs CAP_MKNOD; the other kinds remain
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def make_deep(root: Path) -> None:
    """A chain of 60 directories, with files before and after each one's name."""
    path = root
    for depth in range(60):
        write(path, {f"c{depth}.jpg": b"c" * depth, f"e{depth}.jpg": b"e"})
        path = path / "d"
    path.mkdir(parents=True)


def make_bushy(root: Path) -> None:
    """Five directories in each directory, four levels down, with files at every level."""
    write(root, {"top.jpg": b"t"})
    level = [root]
    for _ in range(4):
        nxt = []
        for parent in level:
            for i in range(5):
                child = parent / f"n{i}"
                write(child, {"a.jpg": b"a", f"m{i}.txt": b"m", "z.jpg": b"zz"})
                nxt.append(child)
        level = nxt


def make_flat(root: Path) -> None:
    """5,000 files in one directory (chunked), other kinds of entry among them."""
    root.mkdir(parents=True)
    for i in range(5000):
        ext = "txt" if i % 7 == 0 else "jpg"
        (root / f"f{i:04d}.{ext}").write_bytes(b"x" * (i % 13))
    write(root, {"f1234.d/inner.jpg": b"i", "f1234.d/deeper/x.jpg": b"x", "f4000.cache/c.jpg": b""})
    (root / "f2500.link").symlink_to(root / "f0001.jpg")
    (root / "f2600.dirlink").symlink_to(root / "f1234.d", target_is_directory=True)
    os.mkfifo(root / "f3000.pipe")
    (root / "f3500.empty").mkdir()
    (root / NON_UTF8).write_bytes(b"jpeg")


def make_too_long(root: Path) -> None:
    """A real, permission-independent failure: paths longer than PATH_MAX cannot be stat'ed or
    listed (ENAMETOOLONG), though the directory holding them can be listed."""
    write(root, {"a.jpg": b"a", "z.jpg": b"z"})
    length, fd = len(os.fsencode(root)), os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while (room := PATH_MAX - 4 - length) > 255:  # a name that ends at PATH_MAX - 3 bytes
            fd = _mkdir_at(fd, "d" * 200)
            length += 201
        fd = _mkdir_at(fd, "e" * room)
        for name in ("a.txt", "f.jpg"):  # the .jpg is stat'ed (and fails), the .txt is not
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        os.mkdir("sub", dir_fd=fd)  # too long to list
    finally:
        os.close(fd)


def _mkdir_at(fd: int, name: str) -> int:
    """Make ``name`` in the directory open as ``fd``; return it opened, closing ``fd``."""
    os.mkdir(name, dir_fd=fd)
    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    return sub


def make_hostile(root: Path) -> None:
    make_hostile_tree(root, root.parent / f"{root.name}-outside")


BUILDERS: dict[str, Callable[[Path], None]] = {
    "odd": make_odd,
    "deep": make_deep,
    "bushy": make_bushy,
    "flat": make_flat,
    "too-long": make_too_long,
    "hostile": make_hostile,
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tree, built once for the module, with a missing root too."""
    base = tmp_path_factory.mktemp("trees")
    built = {"missing": base / "missing"}
    for name, build in BUILDERS.items():
        build(base / name)
        built[name] = base / name
    return built


def test_the_trees_hold_what_they_claim(trees: dict[str, Path]) -> None:
    """The comparisons below mean something: each kind of row is really there."""
    odd = {r.path: r for r in crawl(trees["odd"], JPG)}
    assert odd["pipe.jpg"].kind is Kind.FIFO
    assert odd["keep/pipe"].kind is Kind.FIFO
    assert odd["loop"].kind is Kind.SYMLINK
    assert odd["cache"].skip_reason == "directory excluded by pattern"
    assert odd["keep/raw/b.jpg"].skip_reason == "not selected by include/exclude patterns"
    assert odd[NON_UTF8].skip_reason is None
    assert "empty" not in odd  # an empty directory has no row; its contents would
    long_rows = [r for r in crawl(trees["too-long"], JPG) if r.kind is Kind.UNREADABLE]
    assert [r.skip_reason for r in long_rows] == [
        "cannot stat: File name too long",
        "cannot list directory: File name too long",
    ]
    (missing,) = crawl(trees["missing"], ALL)
    assert (missing.path, missing.kind) == (".", Kind.UNREADABLE)
    assert len(list(crawl(trees["flat"], ALL))) > _listing.SPLIT_ABOVE


# --- the same rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 64])
@pytest.mark.parametrize("tree", ["missing", *BUILDERS])
@pytest.mark.parametrize("patterns", PATTERNS)
def test_same_rows_as_serial(
    trees: dict[str, Path], pool: ThreadPoolExecutor, tree: str, patterns: str, window: int
) -> None:
    serial = events(trees[tree], PATTERNS[patterns])
    assert serial
    assert events(trees[tree], PATTERNS[patterns], pool, window) == serial


@pytest.mark.parametrize("tree", ["odd", "too-long", "hostile"])
def test_same_rows_when_every_directory_is_chunked(
    trees: dict[str, Path], pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, tree: str
) -> None:
    """Chunks of one entry: every entry is classified from a rebuilt DirEntry on a worker."""
    serial = events(trees[tree], JPG)
    monkeypatch.setattr(_listing, "SPLIT_ABOVE", 0)
    monkeypatch.setattr(_listing, "CHUNK_ENTRIES", 1)
    assert events(trees[tree], JPG, pool, window=3) == serial


def test_a_large_directory_is_classified_in_chunks(trees: dict[str, Path]) -> None:
    with RecordingPool(4) as recording:
        rows = list(crawl(trees["flat"], JPG, executor=recording))
    chunks = [fn for fn, _ in recording.submitted if fn is _listing._classify_chunk]
    entries = len(os.listdir(trees["flat"]))
    assert len(chunks) == -(-entries // _listing.CHUNK_ENTRIES)
    assert rows == list(crawl(trees["flat"], JPG))


@pytest.mark.parametrize("window", [1, 2, 5])
def test_no_more_than_window_tasks_are_unfinished(trees: dict[str, Path], window: int) -> None:
    with RecordingPool(4) as recording:
        rows = list(crawl(trees["bushy"], ALL, executor=recording, window=window))
    assert rows == list(crawl(trees["bushy"], ALL))
    assert 1 <= recording.peak <= window
    assert len(recording.submitted) == 1 + 5 + 25 + 125 + 625  # one task per directory


def test_a_stalled_consumer_stalls_the_crawl(trees: dict[str, Path]) -> None:
    """Memory stays bounded: while nobody takes rows, no more tasks are submitted."""
    window = 2
    with RecordingPool(4) as recording:
        rows = crawl(trees["bushy"], ALL, executor=recording, window=window)
        first = next(rows)
        time.sleep(0.2)
        submitted = len(recording.submitted)
        assert submitted <= (_crawl.AHEAD_PER_SLOT + 1) * window + 4  # not the 781 directories
        assert [first, *rows] == list(crawl(trees["bushy"], ALL))


def test_stopping_early_cancels_pending_tasks(trees: dict[str, Path]) -> None:
    with RecordingPool(1) as recording:
        rows = crawl(trees["bushy"], ALL, executor=recording, window=64)
        assert isinstance(rows, Generator)
        assert next(rows).path == "n0/a.jpg"
        rows.close()
    assert any(f.cancelled() for _, f in recording.submitted)


class InlineExecutor(Executor):
    """A real executor that runs each task at once, in the caller's thread: every task finishes
    before the driver looks, the worst case for the lookahead bound."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def make_chain_and_leaves(root: Path) -> None:
    """A 30-deep chain first, then 60 leaf directories: the leaves finish long before the chain
    does and fill the lookahead, yet each next link of the chain must find room."""
    write(root / "a" / "/".join("a" * 30), {"end.jpg": b"e"})
    write(root, {f"b{i:02d}/f.jpg": b"f" for i in range(60)})


@pytest.mark.parametrize("window", [1, 2, 3])
def test_a_full_lookahead_does_not_deadlock(tmp_path: Path, window: int) -> None:
    make_chain_and_leaves(tmp_path)
    assert events(tmp_path, ALL, InlineExecutor(), window) == events(tmp_path, ALL)


def test_parquet_is_identical(
    trees: dict[str, Path],
    pool: ThreadPoolExecutor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_listing, "BATCH_ROWS", 700)  # several row groups
    for tree in ("odd", "flat", "hostile"):
        serial, parallel = tmp_path / f"{tree}-serial.parquet", tmp_path / f"{tree}-pool.parquet"
        stats = write_listing(trees[tree], JPG, serial)
        assert write_listing(trees[tree], JPG, parallel, executor=pool) == stats
        assert parallel.read_bytes() == serial.read_bytes()


# --- failures ----------------------------------------------------------------------------------


class BuggyPatterns(Patterns):
    """Patterns whose ``included`` has a bug (some pattern must be matched for it to be called:
    with none, or ``*``, every file is included without asking)."""

    def included(self, relpath: str) -> bool:
        raise ZeroDivisionError(relpath)


def test_a_bug_inside_a_task_propagates(trees: dict[str, Path], pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ZeroDivisionError):
        list(crawl(trees["bushy"], BuggyPatterns(["*.jpg"], []), executor=pool))


def test_window_must_be_positive(trees: dict[str, Path], pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="window"):
        next(crawl(trees["odd"], ALL, executor=pool, window=0))
    with pytest.raises(ValueError, match="window"):
        ordered_walk(pool, Task(print, ()), list, window=0)


class Stop(Exception):
    """What a strict ``on_sick`` raises."""


def stop(exc: OSError) -> None:
    raise Stop(exc.errno)


def rows_until_stop(root: Path, executor: Executor | None) -> list[Listed]:
    got: list[Listed] = []
    rows = crawl(root, ALL, stop, executor=executor)
    with pytest.raises(Stop):
        got.extend(rows)
    return got


@pytest.mark.mount
@pytest.mark.skipif(NO_SSHFS is not None, reason=str(NO_SSHFS))
def test_a_dead_mount_inside_the_tree(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ENOTCONN (a killed sshfs) in the middle of the tree: on_sick sees the same error
    before the same row; when it raises, the crawl stops after the same rows, tasks cancelled."""
    src, export = tmp_path / "src", tmp_path / "export"
    write(export, {"remote.jpg": b"r"})
    write(src, {f"a{i}/f{j}.jpg": b"a" for i in range(5) for j in range(3)})
    write(src, {f"z{i:02d}/f{j:03d}.jpg": b"z" for i in range(40) for j in range(100)})
    with SshfsMount.start(export, src / "mnt", tmp_path / "work") as mount:
        assert os.listdir(src / "mnt") == ["remote.jpg"]
        mount.kill_client()
        serial = events(src, ALL)
        i = next(i for i, e in enumerate(serial) if e[0] == "sick")
        assert serial[i][2:] == (errno.ENOTCONN, os.strerror(errno.ENOTCONN), str(src / "mnt"))
        assert serial[i + 1][1].path == "mnt"
        assert serial[i + 1][1].kind is Kind.UNREADABLE
        for window in (1, 64):
            assert events(src, ALL, pool, window) == serial
        serial_rows = rows_until_stop(src, None)
        assert serial_rows == rows_of(serial[:i])
        with RecordingPool(1) as recording:
            assert rows_until_stop(src, recording) == serial_rows
        assert any(f.cancelled() for _, f in recording.submitted)
        monkeypatch.setattr(_listing, "SPLIT_ABOVE", 0)  # "mnt" from a rebuilt DirEntry too
        assert events(src, ALL, pool, 4) == serial


@pytest.mark.mount
@pytest.mark.skipif(NO_SSHFS is not None, reason=str(NO_SSHFS))
def test_a_hung_mount_inside_the_tree_bounds_the_lookahead(tmp_path: Path) -> None:
    """While the first directory hangs (a stopped sshfs), the crawl runs ahead only so far; once
    the mount answers, the rows are the serial ones."""
    src, export = tmp_path / "src", tmp_path / "export"
    write(export, {"remote.jpg": b"r"})
    write(src, {f"b{i:03d}/f.jpg": b"b" for i in range(300)})
    window = 4
    mounted = SshfsMount.start(export, src / "a-mnt", tmp_path / "work", extra_options=NO_CACHE)
    with RecordingPool(window) as recording, mounted as mount:  # unmounting unblocks the pool
        serial = events(src, ALL)
        mount.pause_client()
        crawling = in_background(lambda: events(src, ALL, recording, window))
        assert not wait([crawling], timeout=1.0).done
        ahead = _crawl.AHEAD_PER_SLOT * window
        assert window < len(recording.submitted) <= 1 + ahead  # the root, then the lookahead
        mount.resume_client()
        assert crawling.result(timeout=30) == serial


# --- a real Dask cluster -----------------------------------------------------------------------


@pytest.mark.cluster
def test_dask_cluster_gives_the_same_rows(
    trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks, arguments, results and patterns cross to worker processes and back by pickle."""
    from distributed import Client, LocalCluster

    monkeypatch.setattr(_listing, "SPLIT_ABOVE", 500)  # chunks in "flat" and in the hostile tree
    monkeypatch.setattr(_listing, "CHUNK_ENTRIES", 400)
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        for executor in (client.get_executor(), client.get_executor(pure=False)):
            for tree in ("missing", "odd", "flat", "too-long", "hostile", "deep"):
                for window in (2, 32):
                    assert events(trees[tree], JPG, executor, window) == events(trees[tree], JPG)


# --- property ----------------------------------------------------------------------------------

NAME_BYTES = st.sampled_from([b"a", b"B", b".", b" ", b"-", b"~", b"\xe9", b"\xc3\xa9", b"\n"])
NAMES = (
    st.lists(NAME_BYTES, min_size=1, max_size=4)
    .map(b"".join)
    .filter(lambda n: n not in (b".", b".."))
)
KINDS = st.sampled_from(["file", "jpg", "dir", "link", "dangling", "fifo"])
RANDOM_TREES = st.dictionaries(
    st.lists(NAMES, min_size=1, max_size=4).map(tuple), KINDS, max_size=30
)


def build_random(root: Path, tree: dict[tuple[bytes, ...], str]) -> None:
    """Create each entry; skip those under a non-directory or that clash with one made before."""
    leaves: set[tuple[bytes, ...]] = set()
    for parts, kind in sorted(tree.items()):
        if any(parts[:i] in leaves for i in range(1, len(parts))):
            continue  # never create through a symlink
        path = os.path.join(os.fsencode(root), *parts)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _create(path + (b".jpg" if kind == "jpg" else b""), kind)
        except FileExistsError:
            continue
        if kind != "dir":
            leaves.add(parts)


def _create(path: bytes, kind: str) -> None:
    if kind in ("file", "jpg"):
        with open(path, "xb") as f:
            f.write(b"x" * len(path))
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "link":
        os.symlink(b"..", path)
    elif kind == "dangling":
        os.symlink(b"nowhere", path)
    else:
        os.mkfifo(path)


@settings(max_examples=30, deadline=None)
@given(
    tree=RANDOM_TREES,
    patterns=st.sampled_from(list(PATTERNS.values())),
    window=st.integers(min_value=1, max_value=4),
    split=st.integers(min_value=0, max_value=4),
    chunk=st.integers(min_value=1, max_value=3),
)
def test_random_trees(
    tmp_path_factory: pytest.TempPathFactory,
    pool: ThreadPoolExecutor,
    tree: dict[tuple[bytes, ...], str],
    patterns: Patterns,
    window: int,
    split: int,
    chunk: int,
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        build_random(root, tree)
        serial = events(root, patterns)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_listing, "SPLIT_ABOVE", split)
            mp.setattr(_listing, "CHUNK_ENTRIES", chunk)
            assert events(root, patterns, pool, window) == serial
