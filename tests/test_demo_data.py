"""Tests of the sample-data generator ``mountproc._demo_data``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mountproc._demo_data import BAD_FILES, READABLE_ODDITIES, make_camera_jpegs, make_demo_tree

SMALL = (160, 120)


def contents(root: Path, paths: list[Path]) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in paths}


def describe(path: Path) -> tuple[str | None, str, int, bool, int]:
    with Image.open(path) as image:
        image.load()
        frames = getattr(image, "n_frames", 1)
        orientation = image.getexif().get(0x0112, 1)
        return image.format, image.mode, frames, "transparency" in image.info, orientation


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = make_demo_tree(tmp_path / "a", size=SMALL, bad=True)
    second = make_demo_tree(tmp_path / "b", size=SMALL, bad=True)
    assert contents(tmp_path / "a", first) == contents(tmp_path / "b", second)


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    first = contents(tmp_path / "a", make_demo_tree(tmp_path / "a", count=11, size=SMALL))
    second = contents(tmp_path / "b", make_demo_tree(tmp_path / "b", count=11, seed=1, size=SMALL))
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)


def test_good_tree_covers_formats_and_modes(tmp_path: Path) -> None:
    paths = make_demo_tree(tmp_path, size=SMALL)
    assert len(paths) == 48
    assert paths == sorted(paths)
    found = {describe(path) for path in paths}
    formats = {(fmt, mode) for fmt, mode, *_ in found}
    for expected in [("JPEG", "RGB"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "I;16")]:
        assert expected in formats
    assert {"TIFF", "WEBP", "BMP", "GIF"} <= {fmt for fmt, *_ in found}
    assert ("PNG", "P", 1, True, 1) in found  # palette with a transparent index
    assert any(fmt == "GIF" and frames > 1 for fmt, _, frames, *_ in found)
    assert any(fmt == "JPEG" and orientation == 6 for fmt, *_, orientation in found)


def test_good_tree_layout(tmp_path: Path) -> None:
    paths = make_demo_tree(tmp_path, count=20, size=SMALL)
    relpaths = [path.relative_to(tmp_path) for path in paths]
    assert len(paths) == 20
    assert max(len(relpath.parts) for relpath in relpaths) >= 5
    assert len({relpath.parts[0] for relpath in relpaths}) >= 3
    assert {".jpg", ".JPG", ".png"} <= {path.suffix for path in paths}
    duplicates = [name for name, n in Counter(path.name for path in paths).items() if n > 1]
    assert duplicates


def test_images_are_photo_like(tmp_path: Path) -> None:
    paths = make_demo_tree(tmp_path, count=11, size=(640, 480))
    jpeg = next(path for path in paths if path.name == "same_name.jpg")
    assert 20_000 < jpeg.stat().st_size < 200_000  # compresses like a photo, not a flat fill
    with Image.open(jpeg) as image:
        low, high = zip(*image.getextrema(), strict=True)
    assert max(high) - min(low) > 100


def test_bad_files(tmp_path: Path) -> None:
    paths = make_demo_tree(tmp_path, count=11, size=SMALL, bad=True)
    assert len(paths) == 11 + len(BAD_FILES) + len(READABLE_ODDITIES)
    for relpath in BAD_FILES:
        assert tmp_path / relpath in paths
        with pytest.raises((OSError, SyntaxError)), Image.open(tmp_path / relpath) as image:
            image.load()
    assert (tmp_path / "clinic-c/empty.png").stat().st_size == 0
    for relpath in READABLE_ODDITIES:
        assert relpath.endswith(".jpg")
        assert describe(tmp_path / relpath)[0] == "PNG"


def test_no_bad_files_by_default(tmp_path: Path) -> None:
    paths = make_demo_tree(tmp_path, count=11, size=SMALL)
    assert not any(tmp_path / relpath in paths for relpath in {**BAD_FILES, **READABLE_ODDITIES})


def test_count_below_the_special_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count must be at least 11"):
        make_demo_tree(tmp_path, count=3)


def test_camera_jpegs(tmp_path: Path) -> None:
    paths = make_camera_jpegs(tmp_path / "a", 6, size=(320, 240), seed=5)
    again = make_camera_jpegs(tmp_path / "b", 6, size=(320, 240), seed=5)
    assert contents(tmp_path / "a", paths) == contents(tmp_path / "b", again)
    assert len({path.read_bytes() for path in paths}) == 6
    for path in paths:
        with Image.open(path) as image:
            image.load()
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (320, 240))
