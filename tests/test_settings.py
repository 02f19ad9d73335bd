"""Tests of _settings (with mountproc._valohai.environment): layering, defaults and validation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from mountproc._errors import SettingsError
from mountproc._job import Job
from mountproc._resolve import ResolvedRun, flag_name, resolve
from mountproc._setting_values import FailureBudget
from mountproc._settings import RunSettings

ENV_PREFIXES = ("MOUNTPROC_", "VH_", "DASK_")
BARE_NAMES = {name.upper() for name in RunSettings.model_fields} | {"TEST_MODE"}


class Params(BaseModel):
    """Job parameters of the test job."""

    model_config = ConfigDict(extra="forbid")

    size: int = 224
    quality: int = 90


class Env(dict[str, str]):
    """The ``environ`` mapping handed to ``resolve``, mirrored into ``os.environ`` (which
    pydantic-settings reads)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> None:
        super().__init__()
        self._monkeypatch = monkeypatch
        self.config_dir = config_dir
        self.set(VH_CONFIG_DIR=str(config_dir))

    def set(self, **values: str) -> None:
        for key, value in values.items():
            self[key] = value
            self._monkeypatch.setenv(key, value)

    def valohai_parameters(self, values: Any) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "parameters.json").write_text(json.dumps(values), encoding="utf-8")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Env:
    """A clean environment: nothing of mountproc, Valohai or Dask leaks in from outside."""
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIXES) or key.upper() in BARE_NAMES:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return Env(monkeypatch, tmp_path / "config")


def make_job(**kwargs: Any) -> Job:
    kwargs.setdefault("source", "/data/src")
    return Job("resize", params=Params, **kwargs)


def run(
    env: Env,
    cli: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    job: Job | None = None,
) -> ResolvedRun:
    return resolve(job or make_job(), cli or {}, params or {}, env)


def settings_error(env: Env, **kwargs: Any) -> str:
    with pytest.raises(SettingsError) as info:
        run(env, **kwargs)
    return str(info.value)


# --- defaults ----------------------------------------------------------------------------------


def test_builtin_defaults(env: Env, tmp_path: Path) -> None:
    resolved = run(env)
    s = resolved.settings
    assert (s.test_mode, s.test_size, s.shard_max_files) == (False, 100, 1000)
    assert s.shard_max_bytes == 1 << 30
    assert s.max_failures == "1%"
    assert s.budget == FailureBudget(fraction=0.01)
    assert (s.scheduler, s.workers, s.threads_per_worker) == (None, None, 1)
    assert (s.dataset, s.dataset_from, s.dataset_aliases) == (None, None, ())
    assert resolved.source == Path("/data/src")
    assert resolved.outputs == tmp_path / "outputs"
    assert resolved.scratch == tmp_path / ".mountproc-scratch-outputs"
    assert (resolved.on_valohai, resolved.strict_mounts) == (False, False)
    assert resolved.params == Params()


def test_no_source_anywhere(env: Env) -> None:
    message = settings_error(env, job=make_job(source=None))
    assert "--source" in message
    assert "'resize'" in message


def test_cli_source_overrides_job_source(env: Env, tmp_path: Path) -> None:
    assert run(env, {"source": tmp_path / "elsewhere"}).source == tmp_path / "elsewhere"


def test_job_dataset_is_a_default(env: Env) -> None:
    job = make_job(dataset="dataset://images/v1")
    assert run(env, job=job).settings.dataset == "dataset://images/v1"
    cli = {"dataset": "dataset://images/v2"}
    assert run(env, cli, job=job).settings.dataset == "dataset://images/v2"


def test_unknown_job_setting(env: Env) -> None:
    message = settings_error(env, job=make_job(settings={"test_size": 2, "tset_size": 3}))
    assert "'tset_size'" in message


def test_unknown_cli_setting(env: Env) -> None:
    assert "--no-such" in settings_error(env, cli={"no_such": 1})


def test_none_on_the_cli_means_not_given(env: Env) -> None:
    job = make_job(settings={"test_size": 3})
    assert run(env, {"test_size": None, "scheduler": None}, job=job).settings.test_size == 3


# --- precedence --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["test_size", "shard_max_files"])
def test_precedence(env: Env, field: str) -> None:
    """CLI > MOUNTPROC_* env > Valohai parameters.json > Job(settings=...) > built-in."""
    builtin = getattr(run(env).settings, field)
    assert builtin in (100, 1000)
    job = make_job(settings={field: 3})
    assert getattr(run(env, job=job).settings, field) == 3
    env.valohai_parameters({field: 5})
    assert getattr(run(env, job=job).settings, field) == 5
    env.set(**{f"MOUNTPROC_{field.upper()}": "7"})
    assert getattr(run(env, job=job).settings, field) == 7
    assert getattr(run(env, {field: 9}, job=job).settings, field) == 9


def test_precedence_layers_per_field(env: Env) -> None:
    """Each field takes its own highest layer; layers do not replace each other wholesale."""
    job = make_job(settings={"test_size": 3, "shard_max_files": 4, "threads_per_worker": 2})
    env.valohai_parameters({"test_size": 5, "shard_max_files": 6})
    env.set(MOUNTPROC_TEST_SIZE="7")
    s = run(env, {"workers": 8}, job=job).settings
    assert (s.test_size, s.shard_max_files, s.threads_per_worker, s.workers) == (7, 6, 2, 8)


def test_test_mode_env(env: Env) -> None:
    env.set(TEST_MODE="true")
    assert run(env).settings.test_mode is True
    assert run(env, {"test_mode": False}).settings.test_mode is False


def test_test_mode_env_beats_valohai_parameter(env: Env) -> None:
    env.valohai_parameters({"test_mode": True})
    assert run(env).settings.test_mode is True
    env.set(TEST_MODE="false")
    assert run(env).settings.test_mode is False


def test_mountproc_test_mode_beats_bare_test_mode(env: Env) -> None:
    env.set(TEST_MODE="true", MOUNTPROC_TEST_MODE="false")
    assert run(env).settings.test_mode is False


def test_dask_scheduler_address(env: Env) -> None:
    env.set(DASK_SCHEDULER_ADDRESS="tcp://10.0.0.5:8786")
    assert run(env).settings.scheduler == "tcp://10.0.0.5:8786"
    assert run(env, {"scheduler": "tcp://cli:1"}).settings.scheduler == "tcp://cli:1"
    env.set(MOUNTPROC_SCHEDULER="tcp://mine:8786")
    assert run(env).settings.scheduler == "tcp://mine:8786"


def test_invalid_dask_scheduler_address_names_the_flag(env: Env) -> None:
    env.set(DASK_SCHEDULER_ADDRESS="10.0.0.5:8786")
    assert settings_error(env).startswith("invalid setting --scheduler: ")


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Any]:
    """Three files standing for a CA, a certificate and a key (settings only check they exist)."""
    files = {}
    for name in ("tls_ca_file", "tls_cert", "tls_key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN-----\n")
        files[name] = str(path)
    return files


def test_tls_scheduler_with_its_files(env: Env, pem_files: dict[str, Any]) -> None:
    settings = run(env, {"scheduler": "tls://10.0.0.5:8786", **pem_files}).settings
    assert str(settings.tls_cert) == pem_files["tls_cert"]


def test_tls_files_from_the_environment(env: Env, pem_files: dict[str, Any]) -> None:
    env.set(**{f"MOUNTPROC_{k.upper()}": v for k, v in pem_files.items()})
    env.set(DASK_SCHEDULER_ADDRESS="tls://10.0.0.5:8786")
    assert str(run(env).settings.tls_key) == pem_files["tls_key"]


def test_tls_scheduler_without_files_is_refused(env: Env) -> None:
    """hospital data must not cross the network in clear text, nor a TLS connection fail late"""
    env.set(DASK_SCHEDULER_ADDRESS="tls://10.0.0.5:8786")
    assert "uses TLS: pass --tls-ca-file, --tls-cert and --tls-key" in settings_error(env)


@pytest.mark.parametrize("left_out", ["tls_ca_file", "tls_cert", "tls_key"])
def test_tls_files_come_as_three(env: Env, pem_files: dict[str, Any], left_out: str) -> None:
    pem_files.pop(left_out)
    message = settings_error(env, cli={"scheduler": "tls://h:1", **pem_files})
    assert message.endswith(f"{'--' + left_out.replace('_', '-')} missing")


def test_tls_files_with_a_plain_tcp_scheduler(env: Env, pem_files: dict[str, Any]) -> None:
    message = settings_error(env, cli={"scheduler": "tcp://h:1", **pem_files})
    assert "the scheduler address tcp://h:1 is not tls://" in message


def test_missing_tls_file_is_named(env: Env, pem_files: dict[str, Any], tmp_path: Path) -> None:
    pem_files["tls_key"] = str(tmp_path / "nope.pem")
    message = settings_error(env, cli={"scheduler": "tls://h:1", **pem_files})
    assert f"--tls-key {tmp_path / 'nope.pem'}: no such file" in message


def test_empty_scheduler_means_none(env: Env) -> None:
    assert run(env, {"scheduler": ""}).settings.scheduler is None


def test_bare_field_names_in_the_environment_are_ignored(env: Env, tmp_path: Path) -> None:
    """Only MOUNTPROC_* and the named extras (TEST_MODE, DASK_..., VH_...) are read."""
    env.set(OUTPUTS=str(tmp_path / "bare"), SCHEDULER="tcp://bare:1", TEST_SIZE="3")
    resolved = run(env)
    assert resolved.outputs == tmp_path / "outputs"
    assert resolved.settings.scheduler is None
    assert resolved.settings.test_size == 100


def test_vh_outputs_dir(env: Env, tmp_path: Path) -> None:
    env.set(VH_OUTPUTS_DIR=str(tmp_path / "vh-out"))
    resolved = run(env)
    assert resolved.outputs == tmp_path / "vh-out"
    assert resolved.scratch == tmp_path / ".mountproc-scratch-vh-out"
    env.set(MOUNTPROC_OUTPUTS=str(tmp_path / "mine"))
    assert run(env).outputs == tmp_path / "mine"
    assert run(env, {"outputs": tmp_path / "cli"}).outputs == tmp_path / "cli"


def test_outputs_default_on_valohai(env: Env) -> None:
    env.set(VH_JOB_ID="12345")
    resolved = run(env)
    assert resolved.outputs == Path("/valohai/outputs")
    assert resolved.scratch == Path("/valohai/.mountproc-scratch-outputs")
    assert resolved.on_valohai is True


def test_outputs_default_locally_is_absolute(env: Env, tmp_path: Path) -> None:
    resolved = run(env)
    assert resolved.outputs.is_absolute()
    assert resolved.outputs == tmp_path / "outputs"


def test_relative_outputs_and_scratch_are_made_absolute(env: Env, tmp_path: Path) -> None:
    resolved = run(env, {"outputs": Path("out"), "scratch": Path("tmp/s")})
    assert resolved.outputs == tmp_path / "out"
    assert resolved.scratch == tmp_path / "tmp" / "s"


def test_strict_mounts_default(env: Env) -> None:
    assert run(env).strict_mounts is False
    assert run(env, {"strict_mounts": True}).strict_mounts is True
    env.set(VH_JOB_ID="1")
    assert run(env).strict_mounts is True
    assert run(env, {"strict_mounts": False}).strict_mounts is False
    env.set(MOUNTPROC_STRICT_MOUNTS="false")
    assert run(env).strict_mounts is False


def test_empty_vh_job_id_is_not_valohai(env: Env) -> None:
    env.set(VH_JOB_ID="")
    assert run(env).on_valohai is False


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "flag"),
    [
        ({"test_size": 0}, "--test-size"),
        ({"test_size": "many"}, "--test-size"),
        ({"max_failures": "abc"}, "--max-failures"),
        ({"max_failures": "150%"}, "--max-failures"),
        ({"dataset": "images/v1"}, "--dataset"),
        ({"dataset_from": "dataset://only-name"}, "--dataset-from"),
        ({"scheduler": "10.0.0.5:8786"}, "--scheduler"),
        ({"shard_max_bytes": "lots"}, "--shard-max-bytes"),
        ({"shard_max_bytes": 0}, "--shard-max-bytes"),
        ({"shard_max_files": 0}, "--shard-max-files"),
        ({"workers": 0}, "--workers"),
        ({"threads_per_worker": -1}, "--threads-per-worker"),
        ({"test_mode": "maybe"}, "--test-mode"),
    ],
)
def test_invalid_setting_names_the_flag(env: Env, cli: dict[str, Any], flag: str) -> None:
    message = settings_error(env, cli=cli)
    assert message.startswith(f"invalid setting {flag}: ")
    assert "\n" not in message


def test_invalid_dataset_message(env: Env) -> None:
    message = settings_error(env, cli={"dataset": "images/v1"})
    assert message == (
        "invalid setting --dataset: 'images/v1' is not of the form dataset://<name>/<version>"
    )


def test_invalid_setting_from_env_names_the_flag(env: Env) -> None:
    env.set(MOUNTPROC_SHARD_MAX_BYTES="-5")
    assert settings_error(env).startswith("invalid setting --shard-max-bytes: ")


def test_invalid_setting_from_valohai_names_the_flag(env: Env) -> None:
    env.valohai_parameters({"max_failures": "lots"})
    assert settings_error(env).startswith("invalid setting --max-failures: ")


def test_invalid_job_default_names_the_flag(env: Env) -> None:
    job = make_job(settings={"test_size": -1})
    assert settings_error(env, job=job).startswith("invalid setting --test-size: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 * 2**20), ("1GiB", 2**30), ("500MB", 500 * 10**6), ("4096", 4096)],
)
def test_shard_max_bytes_units(env: Env, text: str, expected: int) -> None:
    assert run(env, {"shard_max_bytes": text}).settings.shard_max_bytes == expected


def test_shard_max_bytes_from_valohai_string(env: Env) -> None:
    env.valohai_parameters({"shard_max_bytes": "512MiB"})
    assert run(env).settings.shard_max_bytes == 512 * 2**20


@pytest.mark.parametrize(
    ("value", "budget"),
    [(10, FailureBudget(count=10)), (0.05, FailureBudget(fraction=0.05)), ("5%", None)],
)
def test_max_failures_from_valohai_may_be_a_number(
    env: Env, value: Any, budget: FailureBudget | None
) -> None:
    env.valohai_parameters({"max_failures": value})
    expected = budget or FailureBudget(fraction=0.05)
    assert run(env).settings.budget == expected


def test_max_failures_from_job_settings_may_be_a_number(env: Env) -> None:
    job = make_job(settings={"max_failures": 0})
    assert run(env, job=job).settings.budget == FailureBudget(count=0)


def test_flag_name() -> None:
    assert flag_name("test_size") == "--test-size"
    assert flag_name("workers") == "--workers"


# --- FailureBudget -----------------------------------------------------------------------------


def test_budget_count() -> None:
    budget = FailureBudget.parse("10")
    assert budget == FailureBudget(count=10)
    assert budget.allows(10, 20)
    assert budget.allows(10, 10**9)
    assert not budget.allows(11, 10**9)
    assert str(budget) == "10"


@pytest.mark.parametrize("text", ["0.05", "5%", " 5% ", ".05", "5.0%"])
def test_budget_fraction(text: str) -> None:
    budget = FailureBudget.parse(text)
    assert budget.count is None
    assert budget.fraction == pytest.approx(0.05)
    assert budget.allows(5, 100)
    assert not budget.allows(6, 100)
    assert budget.allows(0, 0)
    assert not budget.allows(1, 10)
    assert str(budget) == "5%"


def test_budget_zero() -> None:
    budget = FailureBudget.parse("0")
    assert budget == FailureBudget(count=0)
    assert budget.allows(0, 1000)
    assert not budget.allows(1, 1000)
    for text in ("0%", "0.0"):
        fraction = FailureBudget.parse(text)
        assert fraction.allows(0, 1000)
        assert not fraction.allows(1, 1000)


def test_budget_whole() -> None:
    for text in ("100%", "1.0"):
        assert FailureBudget.parse(text).allows(1000, 1000)


@pytest.mark.parametrize("percent", range(101))
def test_budget_percent_is_exact(percent: int) -> None:
    """n% of 100 files allows exactly n failures (0.29 * 100 is 28.999... in floats)."""
    budget = FailureBudget.parse(f"{percent}%")
    assert budget.allows(percent, 100)
    assert not budget.allows(percent + 1, 100)
    assert FailureBudget.parse(f"{percent / 100}").allows(percent * 10, 1000)


@pytest.mark.parametrize("text", ["-1", "150%", "abc", "1.5", "", "5 %", "%", "1e-2", "-5%"])
def test_budget_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|between 0 and 1"):
        FailureBudget.parse(text)


# --- job parameters ----------------------------------------------------------------------------


def test_job_param_precedence(env: Env) -> None:
    """CLI param > MOUNTPROC_PARAM_* env > parameters.json > the model's default."""
    assert run(env).params == Params(size=224)
    env.valohai_parameters({"size": 64})
    assert run(env).params == Params(size=64)
    env.set(MOUNTPROC_PARAM_SIZE="128")
    assert run(env).params == Params(size=128)
    assert run(env, params={"size": "32"}).params == Params(size=32)


def test_job_params_layer_per_name(env: Env) -> None:
    env.valohai_parameters({"size": 64, "quality": 70})
    env.set(MOUNTPROC_PARAM_QUALITY="80")
    assert run(env, params={"size": 16}).params == Params(size=16, quality=80)


def test_unknown_job_param(env: Env) -> None:
    message = settings_error(env, params={"sise": 3})
    assert "'sise'" in message
    assert "quality, size" in message


def test_unknown_job_param_from_env(env: Env) -> None:
    env.set(MOUNTPROC_PARAM_COLOUR="red")
    assert "'colour'" in settings_error(env)


def test_invalid_job_param_type(env: Env) -> None:
    message = settings_error(env, params={"size": "big"})
    assert "'size'" in message
    assert "quality" not in message


def test_invalid_job_param_from_valohai(env: Env) -> None:
    env.valohai_parameters({"quality": "high"})
    assert "'quality'" in settings_error(env)


def test_valohai_parameters_are_split(env: Env) -> None:
    env.valohai_parameters({"size": 64, "test_size": 5, "test_mode": True})
    resolved = run(env)
    assert resolved.params == Params(size=64)
    assert (resolved.settings.test_size, resolved.settings.test_mode) == (5, True)


def test_unknown_valohai_parameter_warns(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.valohai_parameters({"size": 64, "colour": "red"})
    with caplog.at_level(logging.WARNING, logger="mountproc._resolve"):
        resolved = run(env)
    assert resolved.params == Params(size=64)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'colour'" in warnings[0].getMessage()
    assert "ignored" in warnings[0].getMessage()


# --- parameters.json ---------------------------------------------------------------------------


def test_parameters_json_not_valid(env: Env) -> None:
    env.config_dir.mkdir()
    (env.config_dir / "parameters.json").write_text("{not json", encoding="utf-8")
    assert "is not valid JSON" in settings_error(env)


def test_parameters_json_not_an_object(env: Env) -> None:
    env.valohai_parameters([1, 2])
    assert "must hold a JSON object" in settings_error(env)


def test_parameters_json_unreadable(env: Env) -> None:
    (env.config_dir / "parameters.json").mkdir(parents=True)  # a directory: reading fails
    assert "cannot read Valohai parameters" in settings_error(env)


def test_parameters_json_read_from_vh_config_dir_only(env: Env, tmp_path: Path) -> None:
    """The mapping handed to resolve decides where parameters.json is."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "parameters.json").write_text('{"test_size": 42}', encoding="utf-8")
    assert run(env).settings.test_size == 100
    env["VH_CONFIG_DIR"] = str(other)
    assert run(env).settings.test_size == 42
