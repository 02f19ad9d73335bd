"""Big, deterministic file trees for the benchmarks, generated once and cached under the work dir.

A tree is ``ROOT/dirs/aNN/bNN/...`` (leaf directories of ``per_dir`` files each) plus one flat
directory ``ROOT/flat`` of ``flat`` files. Names, sizes (0-200 bytes) and contents (lines of
text naming the file) follow from the spec alone; mtimes are whatever the generation gave. An
``empty`` tree's files are all empty: 10,000,000 files of content would take 40 GB of 4 KiB
blocks, empty ones take only their inodes.
Generation runs in one process per CPU, each creating whole directories (or slices of the flat
one) with ``os.open(..., dir_fd=...)``; a tree whose ``<name>.json`` marker matches its spec is
reused as it is, and an unfinished one is removed and made again.

``python -m benchmarks.trees [WORK] [NAME]`` generates a tree (default the 1,000,000-file one) and
prints its path.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_WORK = Path("/tmp/mountproc-bench")
FORMAT = 1  # bump when the layout or contents change: cached trees are then made again
FLAT_SLICE = 10_000  # files of the flat directory per generation task
MAX_SIZE = 200


@dataclass(frozen=True)
class TreeSpec:
    """The shape of a tree: nested directory fanout, files per leaf, files in the flat dir."""

    name: str
    fanout: tuple[int, ...]
    per_dir: int
    flat: int
    empty: bool = False  # every file empty (sizes 0)

    @property
    def leaves(self) -> int:
        """Leaf directories under ``dirs/``."""
        return math.prod(self.fanout)

    @property
    def files(self) -> int:
        """Regular files in the whole tree."""
        return self.leaves * self.per_dir + self.flat


SMOKE = TreeSpec("smoke-3k", (4, 5), 100, 1_000)
"""CI: 2,000 files in 20 directories plus a flat directory of 1,000."""
LISTING = TreeSpec("listing-200k", (25, 40), 100, 100_000)
"""Listing: 100,000 files in 1,000 directories plus a flat directory of 100,000."""
TREE_100K = TreeSpec("tree-100k", (9, 10), 1_000, 10_000)
"""Driver memory, small side: the 1M tree's shape at a tenth of its size."""
TREE_1M = TreeSpec("tree-1m", (30, 30), 1_000, 100_000)
"""Driver memory and test mode: 900,000 files in 900 directories plus a flat one of 100,000."""
TREE_10M = TreeSpec("tree-10m", (99, 100), 1_000, 100_000, empty=True)
"""Driver memory at scale: 9,900,000 empty files in 9,900 directories plus a flat one of
100,000 (the 1M tree's largest directory: what grows is the file count, not one directory)."""
TREES = {spec.name: spec for spec in (SMOKE, LISTING, TREE_100K, TREE_1M, TREE_10M)}


@dataclass(frozen=True)
class _Slice:
    """One generation task: files ``start..stop`` of one directory."""

    rel: str  # the directory, relative to the tree's root
    start: int
    stop: int
    first: int  # the tree-wide index of file ``start`` (it decides size and content)
    empty: bool = False


def tree_1m(work: Path = DEFAULT_WORK) -> Path:
    """The cached 1,000,000-file tree (900 dirs x 1,000 files + a flat dir of 100,000)."""
    return ensure_tree(work, TREE_1M)


def ensure_tree(work: Path, spec: TreeSpec, processes: int | None = None) -> Path:
    """The root of ``spec``'s tree under ``work/trees``: reused when complete, else generated."""
    base = work / "trees"
    root, marker = base / spec.name, base / f"{spec.name}.json"
    wanted = {"format": FORMAT, **asdict(spec), "fanout": list(spec.fanout)}
    if not spec.empty:  # markers written before ``empty`` existed stay valid
        del wanted["empty"]
    if marker.exists() and json.loads(marker.read_text()) == wanted and root.is_dir():
        return root
    marker.unlink(missing_ok=True)
    if root.exists():
        log.info("removing the unfinished tree %s", root)
        shutil.rmtree(root)
    started = time.perf_counter()
    _generate(root, spec, processes or os.cpu_count() or 1)
    marker.write_text(json.dumps(wanted) + "\n")
    log.info("generated %s: %d files in %.1f s", root, spec.files, time.perf_counter() - started)
    return root


def _generate(root: Path, spec: TreeSpec, processes: int) -> None:
    slices = list(_slices(spec))
    for rel in sorted({s.rel for s in slices}):
        (root / rel).mkdir(parents=True, exist_ok=True)
    if processes <= 1:
        for s in slices:
            _write_slice(str(root), s)
        return
    # spawned, not forked: the benchmark process has run threads (listing pools, sshfs helpers)
    # by now, and a child forked while one of them held a lock can wait on it forever
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        jobs = [(str(root), s) for s in slices]
        for _ in pool.starmap(_write_slice, jobs, chunksize=4):
            pass


def _slices(spec: TreeSpec) -> Iterator[_Slice]:
    """Every generation task of the tree, in file order."""
    ranges = [range(n) for n in spec.fanout]
    for i, path in enumerate(itertools.product(*ranges)):
        rel = "/".join(["dirs", *(f"{chr(ord('a') + lvl)}{n:03d}" for lvl, n in enumerate(path))])
        yield _Slice(rel, 0, spec.per_dir, i * spec.per_dir, spec.empty)
    base = spec.leaves * spec.per_dir
    for start in range(0, spec.flat, FLAT_SLICE):
        stop = min(start + FLAT_SLICE, spec.flat)
        yield _Slice("flat", start, stop, base + start, spec.empty)


def _write_slice(root: str, part: _Slice) -> int:
    """Create the files of one slice (in a pool process); return how many."""
    dfd = os.open(os.path.join(root, part.rel), os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        if part.empty:  # only the inodes: about 50 us a file on this machine's ext4
            for n in range(part.start, part.stop):
                os.close(os.open(file_name(n), flags, 0o644, dir_fd=dfd))
            return part.stop - part.start
        for n in range(part.start, part.stop):
            name = file_name(n)
            data = file_content(f"{part.rel}/{name}", part.first + n - part.start)
            fd = os.open(name, flags, 0o644, dir_fd=dfd)
            try:
                if data:
                    os.write(fd, data)
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return part.stop - part.start


def file_name(n: int) -> str:
    """The name of the ``n``-th file of a directory (one in ten is ``.json``)."""
    return f"f{n:06d}.json" if n % 10 == 9 else f"f{n:06d}.txt"


def file_content(rel: str, index: int) -> bytes:
    """The content of a file, sized 0..200 by ``index``: lines naming it, or a JSON object
    (at least its minimal ~20 bytes) for ``.json``."""
    size = (index * 7919) % (MAX_SIZE + 1)
    if rel.endswith(".json"):
        bare = f'{{"index":{index},"pad":""}}'
        pad = "x" * max(size - len(bare), 0)
        return f'{{"index":{index},"pad":"{pad}"}}'.encode()
    line = f"{rel} {index}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def main(argv: list[str]) -> None:
    """Generate (or find) the tree named ``argv[1]`` (default the 1M one) under ``argv[0]``
    (default /tmp/mountproc-bench)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(argv[0]) if argv else DEFAULT_WORK
    spec = TREES[argv[1]] if len(argv) > 1 else TREE_1M
    started = time.perf_counter()
    root = ensure_tree(work, spec)
    print(f"{root} ({spec.files} files, {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
