"""The outputs read back by the real ``webdataset`` and ``wids`` packages, as training code does."""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NON_UTF8, read_manifest, read_metadata
from helpers.awkward import ODD_NAMES, publish_awkward_tree
from PIL import Image

from mountproc._shard.sample import member_key

webdataset = pytest.importorskip("webdataset")

# webdataset 1.0.2 never closes the tar streams it opens (tariterators leaves them to the garbage
# collector): collect them inside each test, where their ResourceWarning is ignored
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_leaked_streams() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real run over photos with awkward names, in shards of 5 files."""
    return publish_awkward_tree(tmp_path_factory.mktemp("wds"))


def expected_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The sample keys in manifest (listing) order."""
    return [member_key(os.fsdecode(r["path_raw"])) for r in rows]


def fields(sample: dict[str, Any]) -> set[str]:
    """A sample's members, without webdataset's ``__key__``, ``__url__``... entries."""
    return {k for k in sample if not k.startswith("__")}


def tar_urls(out: Path) -> list[str]:
    return [str(out / line["file"]) for line in read_metadata(out) if line["file"].endswith(".tar")]


def test_webdataset_reads_every_sample_with_its_key_and_record(published: dict[str, Any]) -> None:
    out, src, rows = published["out"], published["src"], published["rows"]
    dataset = webdataset.WebDataset(tar_urls(out), shardshuffle=False, empty_check=True)
    samples = list(dataset.decode("pil"))
    assert [s["__key__"] for s in samples] == expected_keys(rows)
    for sample, row in zip(samples, rows, strict=True):
        relpath = os.fsdecode(row["path_raw"])
        assert fields(sample) == {"jpg", "json"}, relpath
        assert isinstance(sample["jpg"], Image.Image)
        assert max(sample["jpg"].size) <= 224
        data = (src / relpath).read_bytes()
        stat = (src / relpath).stat()
        assert sample["json"] == {
            "path": row["path"],  # valid UTF-8 (undecodable bytes as \\xNN), as in the manifest
            "path_b64": base64.b64encode(row["path_raw"]).decode(),
            "size": len(data),
            "mtime_ns": stat.st_mtime_ns,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        assert Path(sample["__url__"]).name == row["tar"]


def test_every_loaded_sample_joins_its_manifest_row_by_key(published: dict[str, Any]) -> None:
    rows = {r["key"]: r for r in read_manifest(published["out"]) if r["key"] is not None}
    dataset = webdataset.WebDataset(tar_urls(published["out"]), shardshuffle=False)
    samples = list(dataset)
    assert len(samples) == len(rows) == len(published["rows"])
    for sample in samples:
        row = rows[sample["__key__"]]
        assert Path(sample["__url__"]).name == row["tar"]
        assert sorted(f"{row['key']}.{field}" for field in fields(sample)) == row["members"]


def test_odd_names_keep_their_whole_path_as_the_key(published: dict[str, Any]) -> None:
    dataset = webdataset.WebDataset(tar_urls(published["out"]), shardshuffle=False)
    by_path = {os.fsdecode(base64.b64decode(s["json"]["path_b64"])): s for s in dataset.decode()}
    for name in [*ODD_NAMES, NON_UTF8]:
        sample = by_path[name]
        assert sample["__key__"] == member_key(name)
        assert fields(sample) == {"jpg", "json"}
    keys = [s["__key__"] for s in by_path.values()]
    assert len(keys) == len(set(keys)) == len(published["rows"])


def test_the_index_lists_every_tar_with_its_sample_count(published: dict[str, Any]) -> None:
    out = published["out"]
    index = json.loads((out / "resize-images-wids-index.json").read_text())
    assert index["wids_version"] == 1
    tars = {line["file"]: line["metadata"] for line in read_metadata(out)}
    listed = [s["url"] for s in index["shardlist"]]
    assert listed == sorted(t for t in tars if t.endswith(".tar"))
    for shard in index["shardlist"]:
        assert (out / shard["url"]).stat().st_size == shard["filesize"]
        assert shard["sha256"] == tars[shard["url"]]["sha256"]
        assert shard["md5sum"] == hashlib.md5((out / shard["url"]).read_bytes()).hexdigest()
        counted = webdataset.WebDataset(str(out / shard["url"]), shardshuffle=False)
        assert shard["nsamples"] == sum(1 for _ in counted)
    assert "resize-images-wids-index.json" in tars  # published with the tars, in the dataset


@pytest.fixture
def wids_module() -> Iterator[types.ModuleType]:
    """wids 0.1.11 imports ``torch.distributed`` for its distributed sampler alone; .ci/run
    installs the CPU build of torch so that this test runs there."""
    pytest.importorskip("torch", reason="wids imports torch (.ci/run installs torch==2.13.0)")
    wids = pytest.importorskip("wids")
    yield wids
    sys.modules.pop("wids", None)


def test_wids_reads_samples_by_number_through_the_index(
    published: dict[str, Any], wids_module: types.ModuleType
) -> None:
    out, rows = published["out"], published["rows"]
    cache = published["root"] / "wids-cache"
    dataset = wids_module.ShardListDataset(
        str(out / "resize-images-wids-index.json"), cache_dir=str(cache), transformations=[]
    )
    assert len(dataset) == len(rows)
    keys = expected_keys(rows)
    for i in (0, len(rows) // 2, len(rows) - 1):
        sample = dataset[i]
        assert sample["__key__"] == keys[i]
        record = json.loads(sample[".json"].read())
        assert base64.b64decode(record["path_b64"]) == rows[i]["path_raw"]
        with Image.open(io.BytesIO(sample[".jpg"].read())) as image:
            assert max(image.size) <= 224
