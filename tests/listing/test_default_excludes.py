"""The default excludes: OS metadata (macOS ``._*`` and ``.DS_Store``, ``Thumbs.db``,
``desktop.ini``, Synology ``@eaDir``, ``.snapshot``, ``lost+found``) never reaches a transform,
is counted as excluded with its own reason, and a job can turn them off."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import mountproc
from mountproc import Job
from mountproc._listing.dirscan import JUNK_REASON
from mountproc._listing.listing import crawl
from mountproc._listing.stage import job_patterns
from mountproc._listing.testmode import write_test_listing

JUNK = [
    "a/._IMG_0001.JPG",
    "a/.DS_Store",
    "a/Thumbs.db",
    "a/desktop.ini",
    "a/@eaDir/IMG_0001.JPG/SYNOPHOTO_THUMB_XL.jpg",
    "b/.snapshot/hourly.0/IMG_0002.JPG",
    "lost+found/#12345",
]
REAL = ["a/IMG_0001.JPG", "b/IMG_0002.JPG"]


def _tree(root: Path) -> Path:
    for rel in JUNK + REAL:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00\x05\x16\x07 not an image")  # AppleDouble's magic, for ._ files
    for rel in REAL:
        Image.new("RGB", (40, 30), (200, 20, 20)).save(root / rel, "JPEG")
    return root


def test_os_metadata_is_excluded_with_its_own_reason(tmp_path: Path) -> None:
    rows = {r.path: r for r in crawl(_tree(tmp_path), job_patterns(Job(name="j")))}
    assert sorted(p for p, r in rows.items() if r.skip_reason is None) == REAL
    junk = {p: r.skip_reason for p, r in rows.items() if r.skip_reason is not None}
    # directories are not descended into: the directory itself is the excluded row
    assert set(junk) == {
        "a/._IMG_0001.JPG", "a/.DS_Store", "a/Thumbs.db", "a/desktop.ini", "a/@eaDir",
        "b/.snapshot", "lost+found",
    }  # fmt: skip
    assert set(junk.values()) == {JUNK_REASON}


def test_a_job_can_keep_them(tmp_path: Path) -> None:
    patterns = job_patterns(Job(name="j", default_excludes=False))
    rows = list(crawl(_tree(tmp_path), patterns))
    assert sorted(r.path for r in rows if r.skip_reason is None) == sorted(JUNK + REAL)


def test_test_mode_leaves_them_out_too(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    listing = tmp_path / "listing.parquet"
    stats = write_test_listing(root, job_patterns(Job(name="j")), listing, 100, lambda exc: None)
    assert stats.eligible == len(REAL)


@pytest.mark.cluster
def test_a_run_neither_transforms_nor_fails_them(tmp_path: Path) -> None:
    src, out = _tree(tmp_path / "src"), tmp_path / "out"
    job = Path(__file__).parents[2] / "jobs" / "resize_images.py"
    report = mountproc.run(job, source=src, outputs=out, workers=1)
    s = report.summary
    assert (s["files_ok"], s["files_failed"], s["files_excluded"]) == (2, 0, len(JUNK))
