"""Tests of ``_valohai.inputs``: ``--input NAME`` found in ``inputs.json`` and ``api.json`` as
Valohai writes them, and every way they can be unusable refused as one clear line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from mountproc._errors import MountError, SettingsError
from mountproc._records import FileEntry
from mountproc._valohai.inputs import PRESIGNED_MAX, find_input, remote_files


def _file(name: str, url: str | None = "https://store/x?sig=1", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "path": f"/valohai/inputs/images/{name}",
        "size": 3,
        "storage_uri": url,
        "uri": f"datum://{name}",
        "download_intent": "on-demand",
        "input_id": "in-1",
        **extra,
    }


def _config(tmp_path: Path, files: list[dict[str, Any]], api: bool = True) -> dict[str, str]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "inputs.json").write_text(
        json.dumps({"images": {"input_id": "in-1", "files": files}})
    )
    if api:
        request = {
            "method": "POST",
            "url": "https://app/x/?execution=e",
            "headers": {"Authorization": "Execution-Token t"},
        }
        (config / "api.json").write_text(json.dumps({"input_request": request}))
    return {"VH_CONFIG_DIR": str(config), "VH_INPUTS_DIR": str(tmp_path / "inputs")}


def test_an_on_demand_input_carries_its_files_urls_and_endpoint(tmp_path: Path) -> None:
    env = _config(tmp_path, [_file("b/2.jpg"), _file("a.jpg")])
    found = find_input("images", env)
    assert found.on_demand
    assert found.path == tmp_path / "inputs" / "images"
    assert [f.name for f in found.files] == ["b/2.jpg", "a.jpg"]
    assert found.datums() == {"b/2.jpg": "datum://b/2.jpg", "a.jpg": "datum://a.jpg"}
    assert found.request is not None
    assert found.request.headers == (("Authorization", "Execution-Token t"),)
    remote = remote_files(found, [FileEntry("a.jpg", 3, 0)])
    assert remote is not None
    assert remote.urls == ("https://store/x?sig=1",)
    assert remote.renew_url == "https://app/x/?execution=e"


def test_a_downloaded_input_is_its_directory(tmp_path: Path) -> None:
    env = _config(tmp_path, [_file("a.jpg", download_intent="always")], api=False)
    found = find_input("images", env)
    assert not found.on_demand
    assert remote_files(found, [FileEntry("a.jpg", 3, 0)]) is None


def test_without_api_json_an_on_demand_input_cannot_renew(tmp_path: Path) -> None:
    found = find_input("images", _config(tmp_path, [_file("a.jpg")], api=False))
    assert found.request is None


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            [_file("a.jpg", url=None), _file("b.jpg")],
            f"1 of its 2 files have no pre-signed URL (beyond {PRESIGNED_MAX:,} files",
        ),
        ([_file("a.jpg", url="s3://bucket/a.jpg")], "machine roles"),
        ([_file("a.jpg"), _file("a.jpg")], "two files are named 'a.jpg'"),
        ([_file("../etc/passwd")], "'../etc/passwd' is not a relative path"),
        ([_file("/abs.jpg")], "'/abs.jpg' is not a relative path"),
        ([{"name": "a.jpg"}], "inputs.json is not as expected"),
    ],
)
def test_an_unusable_on_demand_input_is_refused(
    tmp_path: Path, files: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(SettingsError, match=r"^--input images: ") as caught:
        find_input("images", _config(tmp_path, files))
    assert message in str(caught.value)


def test_a_name_the_execution_lacks_names_those_it_has(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        find_input("photos", _config(tmp_path, [_file("a.jpg")]))
    assert "this execution has no input of that name (its inputs: images)" in str(caught.value)


def test_without_inputs_json_a_directory_of_that_name_will_do(tmp_path: Path) -> None:
    env = {"VH_CONFIG_DIR": str(tmp_path / "none"), "VH_INPUTS_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="does not exist"):
        find_input("images", env)
    (tmp_path / "images").mkdir()
    assert not find_input("images", env).on_demand


def test_a_file_the_input_no_longer_has_stops_a_resumed_run(tmp_path: Path) -> None:
    found = find_input("images", _config(tmp_path, [_file("a.jpg")]))
    with pytest.raises(MountError, match=r"has no file 'gone\.jpg'.*--fresh"):
        remote_files(found, [FileEntry("gone.jpg", 3, 0)])


def test_an_input_without_urls_is_one_line_before_any_work(tmp_path: Path) -> None:
    env = _config(tmp_path, [_file("a.jpg", url="s3://bucket/a.jpg")])
    job = tmp_path / "job.py"
    job.write_text(
        "from mountproc import Job\njob = Job(name='j')\njob.transform(lambda s, c: {})\n"
    )
    proc = run_cli(
        "run", job, "--input", "images", "--outputs", tmp_path / "out", cwd=tmp_path, env=env
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "have no pre-signed URL" in line
    assert "make it a downloaded input" in line
    assert not (tmp_path / "out").exists()


def test_input_and_source_together_are_one_line(tmp_path: Path) -> None:
    env = _config(tmp_path, [_file("a.jpg")])
    job = tmp_path / "job.py"
    job.write_text(
        "from mountproc import Job\njob = Job(name='j')\njob.transform(lambda s, c: {})\n"
    )
    proc = run_cli("check", job, "--input", "images", "--source", tmp_path, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "--input and --source contradict each other" in line
