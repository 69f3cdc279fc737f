"""`s3t serve`'s settings are defined once (s3t/service/settings.py): every field is an option
of the command, and one check rejects a bad value, through the command line and directly,
naming the flag."""

from __future__ import annotations

import dataclasses
import math

import pytest
import typer
from typer.testing import CliRunner

from s3t.cli import app as cli
from s3t.service.settings import Settings, SettingsError, flag_of

BAD = [("max_wait_ms", "inf"), ("max_wait_ms", "nan"), ("max_wait_ms", "-1"),
       ("retrain_delay_s", "inf"), ("retrain_delay_s", "nan"), ("retrain_delay_s", "-0.5"),
       ("eval_interval_s", "inf"), ("max_batch", "0"), ("workers", "-1"),
       ("torch_threads", "-2"), ("port", "0"), ("port", "65536"), ("max_queue", "0"),
       ("max_inputs", "0"), ("max_body_bytes", "0"), ("retrain", "capacity:nan"),
       ("retrain", "sometimes"), ("cors_origins", "https://ops.example.com/"),
       ("cors_origins", "ops.example.com"), ("max_ids", "0"), ("callback_attempts", "0"),
       ("callback_backoff_s", "0"), ("callback_allow", "hooks.example.com/path"),
       ("callback_allow", "https://hooks.example.com"), ("callback_allow", "a.*.example.com"),
       ("callback_allow", "user@hooks.example.com"), ("callback_allow", "hooks.example.com:0")]


def serve_params() -> dict[str, object]:
    command = typer.main.get_command(cli).commands["serve"]  # type: ignore[attr-defined]
    return {param.name: param for param in command.params}


def test_every_setting_is_an_option_of_serve_with_its_help_and_default():
    params = serve_params()
    for field in dataclasses.fields(Settings):
        if field.name == "run_dir":  # the RUN argument
            assert params["run"].param_type_name == "argument"
            continue
        if field.name == "token":  # read from --token-file (or S3T_API_TOKEN)
            assert "--token-file" in params["token_file"].opts
            continue
        if field.name == "callback_secret":  # read from --callback-secret-file (or the env)
            assert "--callback-secret-file" in params["callback_secret_file"].opts
            continue
        param = params[field.name]
        assert param.opts == [flag_of(field.name)], field.name
        assert param.help.startswith(field.metadata["help"])
        if field.name not in ("cors_origins", "callback_allow"):  # repeatable: None there
            assert param.default == field.default, field.name
    # --signing-key: the run's key, an option of every command that writes the run
    assert set(params) == {"run", "token_file", "callback_secret_file", "signing_key_file"} | {
        f.name for f in dataclasses.fields(Settings)
        if f.name not in ("run_dir", "token", "callback_secret")}


@pytest.mark.parametrize("field, value", BAD)
def test_a_bad_setting_is_refused_by_the_command_line_naming_its_flag(tmp_path, field, value):
    # refused before the run is opened or any model loads: tmp_path is not even a run
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), flag_of(field), value])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith(f"error: {flag_of(field)}: ") and "\n" not in line, line
    assert "not an s3t run" not in line


@pytest.mark.parametrize("field, value", BAD)
def test_a_bad_setting_is_refused_by_settings_itself(tmp_path, field, value):
    kind = {f.name: str(f.type) for f in dataclasses.fields(Settings)}[field]
    typed = {"int": int, "float": float}.get(kind, str)(value)
    if field in ("cors_origins", "callback_allow"):
        typed = (value,)
    with pytest.raises(SettingsError) as raised:
        Settings(tmp_path, **{field: typed}).check()
    assert raised.value.field == field and str(raised.value).startswith(flag_of(field) + ": ")


def test_non_finite_waits_are_refused_and_finite_ones_kept(tmp_path):
    for field in ("max_wait_ms", "retrain_delay_s", "eval_interval_s"):
        for value in (math.inf, -math.inf, math.nan):
            with pytest.raises(SettingsError, match="finite number"):
                Settings(tmp_path, **{field: value}).check()
    settings = Settings(tmp_path, max_wait_ms=2.5, retrain_delay_s=30, workers=0,
                        cors_origins=("http://127.0.0.1:5173", "*")).check()
    assert settings.model_workers >= 1 and settings.policy.mode == "manual"


def test_a_public_host_needs_a_token(tmp_path):
    with pytest.raises(SettingsError, match="--host: refusing to serve on 0.0.0.0 without a"):
        Settings(tmp_path, host="0.0.0.0").check()
    assert Settings(tmp_path, host="0.0.0.0", token="t0ken").check().host == "0.0.0.0"
    with pytest.raises(SettingsError, match="--token-file"):
        Settings(tmp_path, token="two words").check()


def test_create_app_takes_settings_and_checks_them_once(tmp_path):
    from s3t.service import create_app

    with pytest.raises(SettingsError, match="--max-wait-ms"):
        create_app(Settings(tmp_path, max_wait_ms=math.inf))
    with pytest.raises(SettingsError, match="--retrain-delay"):
        create_app(tmp_path, retrain_delay_s=math.nan)
    app = create_app(Settings(tmp_path, token="t0ken", max_batch=4))
    assert app.state.service.settings == Settings(tmp_path, token="t0ken", max_batch=4)


def test_the_callback_secret_is_read_from_its_file_and_a_short_one_refused(tmp_path):
    short = tmp_path / "secret"
    short.write_text("too-short\n")
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--callback-secret-file", str(short)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --callback-secret-file: ") and "16" in result.output
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--callback-secret-file",
                                      str(tmp_path / "missing")])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_callback_hosts_come_from_the_flag_or_its_environment_variable_as_lists(
        tmp_path, monkeypatch):
    from s3t.service.callback_hosts import ALLOW_ENV

    param = serve_params()["callback_allow"]
    assert param.opts == ["--callback-allow"] and param.envvar == ALLOW_ENV and param.multiple
    settings = Settings(tmp_path, callback_allow=("hooks.example.com, 127.0.0.1:8443",
                                                  "*.dpo.example", "[::1]:9")).check()
    assert settings.callback_allow == ("hooks.example.com", "127.0.0.1:8443", "*.dpo.example",
                                       "[::1]:9")
    assert Settings(tmp_path).callback_allow == ()  # nothing allowed unless listed
    # the environment variable is read when the flag is not given (and checked the same way)
    monkeypatch.setenv(ALLOW_ENV, "hooks.example.com,bad/path")
    result = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --callback-allow: 'bad/path' is not a host")
    help_text = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--callback-allow" in help_text and ALLOW_ENV in help_text
