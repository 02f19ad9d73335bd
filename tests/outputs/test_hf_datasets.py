"""The outputs read by Hugging Face ``datasets`` (its packaged ``webdataset`` builder, offline),
whole and streaming, a non-UTF-8 source name included; every sample joins its manifest row by
key."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NON_UTF8, read_manifest, read_metadata
from helpers.awkward import ODD_NAMES, publish_awkward_tree

datasets = pytest.importorskip("datasets")

pytestmark = [
    pytest.mark.slow,
    # datasets' own threads and caches leave unraisable warnings behind when they end
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:  # offline, caches in the test's directory
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(root / "hf-home"))
        yield publish_awkward_tree(root)


def _tars(out: Path) -> list[str]:
    return [str(out / m["file"]) for m in read_metadata(out) if m["file"].endswith(".tar")]


def _check(samples: list[dict[str, Any]], published: dict[str, Any]) -> None:
    """Every sample once, joined to its manifest row by key, its record naming its source."""
    rows = {r["key"]: r for r in read_manifest(published["out"]) if r["key"] is not None}
    assert sorted(s["__key__"] for s in samples) == sorted(rows)
    names = set()
    for sample in samples:
        row = rows[sample["__key__"]]
        record = sample["json"]
        assert record["path"] == row["path"]  # valid UTF-8, as pyarrow requires
        raw = base64.b64decode(record["path_b64"])
        assert raw == row["path_raw"]
        assert record["sha256"] == row["sha256"]
        assert sample["jpg"].size[0] <= 224
        names.add(os.fsdecode(raw))
    assert {NON_UTF8, *ODD_NAMES} <= names


def test_datasets_loads_every_sample(published: dict[str, Any], tmp_path: Path) -> None:
    loaded = datasets.load_dataset(
        "webdataset", data_files={"train": _tars(published["out"])}, split="train",
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    _check(list(loaded), published)


def test_datasets_streams_every_sample(published: dict[str, Any]) -> None:
    streamed = datasets.load_dataset(
        "webdataset", data_files={"train": _tars(published["out"])}, split="train", streaming=True
    )
    _check(list(streamed), published)
