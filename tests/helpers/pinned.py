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
    "pinned-000000.tar": "7080c0bf3fb9909249b61a3106684aafe2a35696a84a11a082c247844103fa8e",
    "pinned-000001.tar": "7c59d6e04a783c73c6d03510757cf9b1a1f9f56b57293f9e259476370b7ef5aa",
    "pinned-000002.tar": "b86ccad24ba1fce7d8e16780f50e57b7a68724f9f373aa9f2995dbf00cb8a4b2",
}


def make_tree(root: Path) -> None:
    for rel, data in FILES.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
