"""Tests of ``_shard.sample``: member keys that are unique, safe, and split like WebDataset."""

from __future__ import annotations

import itertools
import os
import re

import pytest

from mountproc._shard.sample import member_key

# The split WebDataset's ``base_plus_ext`` uses to cut a member name into key and suffix.
WDS_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

TRICKY = [
    "a.b",
    "a%2Eb",
    "a%2eb",
    "a_b",
    "a%b",
    "a%25b",
    "x/y.z",
    "x.y/z",
    "x%2Ey/z",
    "x/y%2Ez",
    ".hidden",
    "%2Ehidden",
    "dir/.hidden",
    ".dir/file",
    "a..b",
    "...",
    "a\nb",
    "a%0Ab",
    "a\x7fb",
    "a%7Fb",
    os.fsdecode(b"caf\xff"),
    "caf%FF",
    "caf\u00ff",
    "tab\there.jpg",
    "日本/ファイル.tar.gz",
    "a b/c d.e f",
]


def wds_split(name: str) -> tuple[str, str] | None:
    m = WDS_SPLIT.match(name)
    return (m.group(1), m.group(2)) if m else None


# --- member_key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "key"),
    [
        ("plain", "plain"),
        ("photo.jpg", "photo%2Ejpg"),
        ("a.b/c.d/e.f", "a.b/c.d/e%2Ef"),
        ("100%.txt", "100%25%2Etxt"),
        ("dir%/x", "dir%25/x"),
        ("line\nbreak", "line%0Abreak"),
        ("nul\x00x", "nul%00x"),
        ("del\x7f", "del%7F"),
        ("ctl\x1f/f", "ctl%1F/f"),
        (os.fsdecode(b"caf\xe9.txt"), "caf%E9%2Etxt"),
        (os.fsdecode(b"d\x80ir/f\xff"), "d%80ir/f%FF"),
        ("café.txt", "café%2Etxt"),
        (".hidden", "%2Ehidden"),
        ("...", "%2E%2E%2E"),
        ("...dir/x", "...dir/x"),
    ],
)
def test_member_key_escapes(relpath: str, key: str) -> None:
    assert member_key(relpath) == key


@pytest.mark.parametrize(
    "relpath",
    ["", "/abs", "/abs/x.jpg", "a//b", "a/", "./a", "a/./b", "..", "../x", "a/../b", "a/..", "."],
)
def test_member_key_rejects_unsafe_paths(relpath: str) -> None:
    with pytest.raises(ValueError, match="unsafe relative path"):
        member_key(relpath)


def test_member_key_is_injective_on_tricky_names() -> None:
    keys = {name: member_key(name) for name in TRICKY}
    assert len(set(keys.values())) == len(TRICKY), keys


def _all_names() -> list[str]:
    alphabet = ["a", ".", "%", "2", "E", "/", "\x01", "\udcff", "\xff"]
    names = []
    for n in range(1, 5):
        for combo in itertools.product(alphabet, repeat=n):
            name = "".join(combo)
            parts = name.split("/")
            if not any(p in ("", ".", "..") for p in parts):
                names.append(name)
    return names


def test_member_key_is_injective_exhaustively() -> None:
    names = _all_names()
    assert len(names) > 3000
    keys: dict[str, str] = {}
    for name in names:
        key = member_key(name)
        assert key not in keys, f"{name!r} and {keys[key]!r} both map to {key!r}"
        keys[key] = name


def assert_safe_key(relpath: str) -> None:
    key = member_key(relpath)
    assert not key.startswith("/")
    assert ".." not in key.split("/")
    assert "" not in key.split("/")
    assert "." not in key.rsplit("/", 1)[-1]
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
    key.encode("utf-8")  # no lone surrogates left
    assert key.count("/") == relpath.count("/")
    for suffix in ("jpg", "json", "seg.png"):
        assert wds_split(f"{key}.{suffix}") == (key, suffix)


@pytest.mark.parametrize("relpath", TRICKY)
def test_member_key_is_safe_and_splits_like_webdataset(relpath: str) -> None:
    assert_safe_key(relpath)


def test_every_key_is_safe_and_splits_like_webdataset() -> None:
    for relpath in _all_names():
        assert_safe_key(relpath)


def test_unescaped_name_would_split_wrongly() -> None:
    """The reason dots are escaped: WebDataset cuts the key at the first dot of the name."""
    assert wds_split("x.y/a.b.jpg") == ("x.y/a", "b.jpg")
    assert wds_split(member_key("x.y/a.b") + ".jpg") == ("x.y/a%2Eb", "jpg")


# --- TarBuilder ------------------------------------------------------------------------------
