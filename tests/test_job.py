"""Tests of ``_job``: the Job API, output normalisation and job-file loading."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from mountproc import Context, Job, JobFileError, NoParams, SettingsError, Skip, SourceFile
from mountproc._errors import UsageError
from mountproc._job import check_dataset_uri
from mountproc._jobfile import load_job, read_job_file
from mountproc._records import JobRef
from mountproc._shard.sample import normalize_outputs

GOOD_JOB = """\
from pydantic import BaseModel
from mountproc import Job


class Params(BaseModel):
    size: int = 3


job = Job(name="good-job", source="/data", include=["*.jpg"], params=Params)


@job.setup
def setup(params):
    return params.size


@job.transform
def transform(src, ctx):
    return {"txt": "x"}
"""


def write_job(tmp_path: Path, text: str, name: str = "job.py") -> JobRef:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return read_job_file(path)


def load_error(tmp_path: Path, text: str) -> str:
    ref = write_job(tmp_path, text)
    with pytest.raises(JobFileError) as info:
        load_job(ref)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{ref.filename}: ")
    return message


# --- loading ---------------------------------------------------------------------------------


def test_load_good_job(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, GOOD_JOB))
    assert job.name == "good-job"
    assert job.source == "/data"
    assert job.include == ("*.jpg",)
    assert job.exclude == ()
    assert job.transform_fn is not None
    assert job.setup_fn is not None
    assert job.params.__name__ == "Params"
    assert job.parse_params({}).model_dump() == {"size": 3}


def test_same_text_is_loaded_once(tmp_path: Path) -> None:
    text = GOOD_JOB.replace("good-job", "cached-job")
    first = load_job(write_job(tmp_path, text, "a.py"))
    again = load_job(write_job(tmp_path, text, "a.py"))
    elsewhere = load_job(write_job(tmp_path, text, "b.py"))
    assert first is again is elsewhere
    changed = load_job(write_job(tmp_path, text + "\n# changed\n", "a.py"))
    assert changed is not first


def test_job_params_model_is_picklable_by_module_name(tmp_path: Path) -> None:
    """pydantic resolves annotations through ``sys.modules``; the model must work there."""
    text = GOOD_JOB.replace("good-job", "annotated-job").replace(
        "from pydantic", "from __future__ import annotations\nfrom pydantic"
    )
    job = load_job(write_job(tmp_path, text))
    assert job.params.model_validate_json('{"size": 5}').model_dump() == {"size": 5}


def test_read_job_file(tmp_path: Path) -> None:
    ref = write_job(tmp_path, GOOD_JOB)
    assert ref.source == GOOD_JOB
    assert ref.digest == hashlib.sha256(GOOD_JOB.encode()).hexdigest()
    assert Path(ref.filename).is_absolute()
    assert ref.filename == str((tmp_path / "job.py").resolve())


def test_read_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="does not exist"):
        read_job_file(tmp_path / "nope.py")


def test_read_undecodable_job_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.py"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(JobFileError, match="cannot be read"):
        read_job_file(path)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "from mountproc import Job\n\nx = 1 +\ny = 2\n")
    assert message.endswith(": line 3: SyntaxError: invalid syntax")


def test_indentation_error_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "x = 1\nif x:\ny = 2\n")
    assert ": line 3: SyntaxError: expected an indented block" in message


def test_exception_at_import_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'x = 1\ny = 2\nraise RuntimeError("boom")\n')
    assert message.endswith(": line 3: RuntimeError: boom")


def test_exception_in_called_function_names_the_deepest_job_line(tmp_path: Path) -> None:
    text = 'def helper():\n    return {}["missing"]\n\n\nhelper()\n'
    message = load_error(tmp_path, text)
    assert message.endswith(": line 2: KeyError: 'missing'")


def test_exception_in_a_library_names_the_job_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "import json\n\njson.loads('{')\n")
    assert ": line 3: JSONDecodeError: " in message


def test_missing_import_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "import os\nimport no_such_module_xyz\n")
    assert message.endswith(": line 2: ModuleNotFoundError: No module named 'no_such_module_xyz'")


def test_multiline_exception_becomes_one_line(tmp_path: Path) -> None:
    text = """\
    from pydantic import BaseModel

    class M(BaseModel):
        a: int
        b: int

    M(a="x", b="y")
    """
    message = load_error(tmp_path, text)
    assert ": line 7: ValidationError: 2 validation errors for M " in message


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_job(tmp_path: Path, count: int) -> None:
    jobs = "\n".join(
        f"job{i} = Job(name='j{i}')\n@job{i}.transform\ndef t{i}(src, ctx):\n    return {{}}\n"
        for i in range(count)
    )
    message = load_error(tmp_path, f"from mountproc import Job\n{jobs}")
    assert f"expected exactly one mountproc.Job, found {count}" in message


def test_no_transform(tmp_path: Path) -> None:
    message = load_error(tmp_path, "from mountproc import Job\njob = Job(name='lazy')\n")
    assert "job 'lazy' has no transform" in message


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        ("Job(name='Bad Name')", "job name 'Bad Name' is invalid"),
        ("Job(name='-x')", "job name '-x' is invalid"),
        ("Job(name='')", "job name '' is invalid"),
        ("Job(name='a' * 64)", "is invalid"),
        ("Job(name='ok', dataset='s3://bucket/x')", "is not of the form dataset://"),
        ("Job(name='ok', dataset='dataset://only-name')", "is not of the form dataset://"),
        ("Job(name='ok', params=dict)", "must be a pydantic BaseModel subclass"),
        ("Job(name='ok', params=NoParams())", "must be a pydantic BaseModel subclass"),
        ("Job(name='ok', include=[''])", "non-empty strings"),
        ("Job(name='ok', exclude=[3])", "non-empty strings"),
    ],
)
def test_invalid_declaration_in_a_job_file(tmp_path: Path, declaration: str, expected: str) -> None:
    text = f"from mountproc import Job, NoParams\n\njob = {declaration}\n"
    message = load_error(tmp_path, text)
    assert expected in message
    assert ": line 3: " in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "Upper"},
        {"name": "ok", "dataset": "http://x/y"},
        {"name": "ok", "params": int},
        {"name": "ok", "include": ["*.jpg", ""]},
    ],
)
def test_invalid_declaration_raises_job_file_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(JobFileError):
        Job(**kwargs)  # type: ignore[arg-type]


def test_valid_declaration() -> None:
    job = Job(name="a-b_9", dataset="dataset://images/v1.2", include=iter(["*.png"]))
    assert job.include == ("*.png",)
    assert job.params is NoParams
    assert job.readonly is True


def test_decorators_register_and_return_the_function() -> None:
    job = Job(name="deco")

    def transform(src: SourceFile, ctx: object) -> None:
        return None

    def setup(params: object) -> int:
        return 1

    assert job.transform(transform) is transform
    assert job.setup(setup) is setup
    assert job.transform_fn is transform
    assert job.setup_fn is setup


def test_failed_load_can_be_fixed_and_reloaded(tmp_path: Path) -> None:
    load_error(tmp_path, "raise ValueError('not yet')\n")
    job = load_job(write_job(tmp_path, GOOD_JOB.replace("good-job", "fixed-job")))
    assert job.name == "fixed-job"


# --- parameters ------------------------------------------------------------------------------


class Params(BaseModel):
    size: int = Field(224, ge=8)
    mode: str = "rgb"


def test_parse_params() -> None:
    job = Job(name="p", params=Params)
    parsed = job.parse_params({"size": "64"})
    assert isinstance(parsed, Params)
    assert parsed.size == 64
    assert parsed.mode == "rgb"


def test_parse_params_unknown() -> None:
    job = Job(name="p", params=Params)
    with pytest.raises(
        SettingsError, match=r"unknown job parameter 'colour' \(this job has: mode, size\)"
    ):
        job.parse_params({"colour": 1, "size": 9})


def test_parse_params_unknown_without_params() -> None:
    with pytest.raises(SettingsError, match=r"this job has: none"):
        Job(name="p").parse_params({"x": 1})


@pytest.mark.parametrize(("values", "name"), [({"size": 4}, "size"), ({"size": "big"}, "size")])
def test_parse_params_invalid(values: dict[str, object], name: str) -> None:
    job = Job(name="p", params=Params)
    with pytest.raises(SettingsError, match=f"job parameter '{name}'") as info:
        job.parse_params(values)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UsageError)


def test_check_dataset_uri() -> None:
    assert check_dataset_uri("dataset://a/b", "x") == "dataset://a/b"
    for bad in ("dataset://a", "dataset://a/b/c", "dataset:///b", "a/b", "dataset://a/ b"):
        with pytest.raises(SettingsError, match="--dataset"):
            check_dataset_uri(bad, "--dataset")


# --- outputs ---------------------------------------------------------------------------------


def test_normalize_outputs_encodes_and_sorts() -> None:
    out = normalize_outputs(
        {
            "txt": "héllo",
            "jpg": b"\xff\xd8",
            "bin": bytearray(b"ba"),
            "raw": memoryview(b"mv"),
            "json": {"b": 1, "a": ["é"]},
            "meta.json": [1, 2],
            "cls": "3",
        }
    )
    assert [s for s, _ in out] == ["bin", "cls", "jpg", "json", "meta.json", "raw", "txt"]
    got = dict(out)
    assert got["txt"] == "héllo".encode()
    assert got["jpg"] == b"\xff\xd8"
    assert got["bin"] == b"ba"
    assert got["raw"] == b"mv"
    assert got["json"] == '{"a": ["é"], "b": 1}'.encode()
    assert json.loads(got["meta.json"]) == [1, 2]
    assert all(type(data) is bytes for _, data in out)


def test_normalize_outputs_json_string_is_written_as_is() -> None:
    assert normalize_outputs({"json": '{"pre": "encoded"}'}) == [("json", b'{"pre": "encoded"}')]


def test_normalize_outputs_json_keeps_undecodable_paths() -> None:
    path = os.fsdecode(b"dir/caf\xe9.jpg")
    ((_, data),) = normalize_outputs({"json": {"source": path}})
    data.decode("utf-8")
    assert json.loads(data) == {"source": path}
    assert os.fsencode(json.loads(data)["source"]) == b"dir/caf\xe9.jpg"


def test_normalize_outputs_empty() -> None:
    assert normalize_outputs({}) == []


@pytest.mark.parametrize(
    "suffix",
    ["", ".jpg", "jpg.", "a/b", "../x", "..", "a..b", "a b", "é", "x" * 33, "-x", 1, None],
)
def test_normalize_outputs_rejects_bad_suffixes(suffix: object) -> None:
    with pytest.raises(ValueError, match="invalid output suffix"):
        normalize_outputs({suffix: b""})  # type: ignore[dict-item]


@pytest.mark.parametrize("suffix", ["jpg", "seg.png", "tar.gz", "A-1_b", "x" * 32, "0"])
def test_normalize_outputs_accepts_good_suffixes(suffix: str) -> None:
    assert normalize_outputs({suffix: b"d"}) == [(suffix, b"d")]


@pytest.mark.parametrize("value", [[("jpg", b"")], "jpg", b"x", 3])
def test_normalize_outputs_rejects_non_mappings(value: object) -> None:
    with pytest.raises(TypeError, match="must return a mapping"):
        normalize_outputs(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [3, None, {"a": 1}, [1]])
def test_normalize_outputs_rejects_non_bytes_for_non_json(content: object) -> None:
    with pytest.raises(TypeError, match="output 'txt' must be bytes or str"):
        normalize_outputs({"txt": content})


def test_normalize_outputs_rejects_unserialisable_json() -> None:
    with pytest.raises(TypeError):
        normalize_outputs({"json": {"x": object()}})


# --- SourceFile ------------------------------------------------------------------------------


def test_source_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    src = SourceFile(path, "f.bin", 3, 0)
    assert src.read_bytes() == b"abc"
    with src.open() as f:
        assert f.read(2) == b"ab"


# --- Job.apply, one registration each, Context's state type ---------------------------------


class Scale(BaseModel):
    factor: int = Field(2, ge=1)


def _counting_job() -> tuple[Job, list[int]]:
    job = Job(name="apply", params=Scale)
    setups: list[int] = []

    @job.setup
    def setup(params: Scale) -> dict[str, int]:
        setups.append(params.factor)
        return {"factor": params.factor}

    @job.transform
    def repeat(src: SourceFile, ctx: Context[Scale, dict[str, int]]) -> dict[str, object] | None:
        data = src.read_bytes()
        if data == b"decline":
            return None
        if data == b"skip":
            raise Skip("not wanted")
        if data == b"boom":
            raise KeyError("label")
        assert ctx.tmp_dir.is_dir()
        return {"txt": data * ctx.state["factor"], "meta.json": {"name": src.relpath}}

    return job, setups


def test_apply_runs_setup_once_per_parameters_and_returns_member_bytes(tmp_path: Path) -> None:
    job, setups = _counting_job()
    path = tmp_path / "a.txt"
    path.write_bytes(b"ab")
    assert job.apply(path) == {"meta.json": b'{"name": "a.txt"}', "txt": b"abab"}
    assert job.apply(str(path)) == {"meta.json": b'{"name": "a.txt"}', "txt": b"abab"}
    assert job.apply(path, factor=3)["txt"] == b"ababab"
    assert setups == [2, 3]


def test_apply_declines_skips_and_raises_as_the_transform_does(tmp_path: Path) -> None:
    job, _ = _counting_job()
    for content, raised, message in [
        (b"decline", Skip, "declined by the transform"),
        (b"skip", Skip, "not wanted"),
        (b"boom", KeyError, "label"),
    ]:
        path = tmp_path / content.decode()
        path.write_bytes(content)
        with pytest.raises(raised, match=message):
            job.apply(path)


def test_apply_validates_parameters_and_the_reserved_suffix(tmp_path: Path) -> None:
    job, _ = _counting_job()
    path = tmp_path / "a.txt"
    path.write_bytes(b"x")
    with pytest.raises(SettingsError, match="factor"):
        job.apply(path, factor=0)
    reserved = Job(name="reserved")
    reserved.transform(lambda src, ctx: {"json": {}})
    with pytest.raises(JobFileError, match="'json', which mountproc writes itself"):
        reserved.apply(path)


@pytest.mark.parametrize("what", ["transform", "setup"])
def test_a_second_registration_is_an_error(what: str) -> None:
    job = Job(name="twice")

    def first(*args: object) -> None:
        return None

    def second(*args: object) -> None:
        return None

    register = getattr(job, what)
    register(first)
    with pytest.raises(JobFileError, match=rf"already has a {what}, .*first\(\).*second\(\)"):
        register(second)
    assert getattr(job, f"{what}_fn") is first


def test_a_job_file_with_two_transforms_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.py"
    path.write_text(GOOD_JOB + "\n\n@job.transform\ndef again(src, ctx):\n    return {}\n")
    with pytest.raises(JobFileError, match=r"line \d+: .*already has a transform, transform\(\)"):
        load_job(read_job_file(path))
