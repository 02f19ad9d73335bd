"""A fixed tree whose tars are pinned byte for byte (odd names, a failing file, a declined one,
three shards), and the job that makes them."""

from __future__ import annotations

import os
from pathlib import Path

JOB = (Path(__file__).parent / "pinned_job.py").read_text()

# the tree: names chosen to exercise the member key (dots, '%', spaces, non-UTF-8 bytes)
FILES: dict[bytes, bytes] = {
    b"a/one.txt": b"hello\n",
    b"a/two.v2.txt": b"dots in the name\n",
    b"a/b/100%.txt": b"percent\n",
    b"a/b/with space.txt": b"space\n",
    b"c/caf\xe9.txt": b"latin-1 name\n",
    b"c/bad.txt": b"bad content\n",
    b"c/skip.txt": b"skip me\n",
    b"d/blob.bin": bytes(range(256)) * 40,
    b"d/ignored.dat": b"not included\n",
}
MTIME_NS = 1_700_000_000_123_456_789

PINNED = {
    "pinned-000000.tar": "a69ef43902e4067553d6c054d0e5bfc9cce523f6ecd9fd4ee4b8f4cc7cdd21bf",
    "pinned-000001.tar": "af6919add47bb186eb085d408b018e16b5483bca5f7b0089a3d61879c8c685c1",
    "pinned-000002.tar": "cdaecc8fbbb2e639ad14b25b247a0cb66c8870c33f1c216ed405d85ce1e7a217",
}


def make_tree(root: Path) -> None:
    for rel, data in FILES.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
