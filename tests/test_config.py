"""S3TConfig: every field documents itself, the CLI shows that documentation, and invalid
values raise a ConfigError naming the config field (which the CLI maps to its flag)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from s3t.cli import app
from s3t.cli.train import CONFIG_FLAGS, DEMO_FLAGS
from s3t.config import ConfigError, S3TConfig, config_help

FIELDS = [f.name for f in dataclasses.fields(S3TConfig)]
NOT_ON_THE_COMMAND_LINE = {"weight_decay", "aggregation"}  # library-only settings


def _squash(text: str) -> str:
    """Help text without whitespace: click re-wraps lines (and breaks after hyphens)."""
    return "".join(text.split())


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_has_a_one_sentence_help(name):
    text = config_help(name)
    assert text.strip() and text == text.strip()
    assert text[0].isupper() and text.endswith("."), text
    assert "--" not in text, "config help speaks of fields, not of command-line flags"


def test_config_help_rejects_unknown_fields():
    with pytest.raises(KeyError, match="nope"):
        config_help("nope")


def test_every_field_is_a_train_flag_or_deliberately_library_only():
    assert set(CONFIG_FLAGS) | NOT_ON_THE_COMMAND_LINE == set(FIELDS)
    assert not set(CONFIG_FLAGS) & NOT_ON_THE_COMMAND_LINE


TRAIN_ONLY = {"--data", "--out", "--eval", "--eval-size", "--limit", "--json", "--signing-key"}


def test_train_has_an_option_per_config_field_and_no_other():
    """The train command's options are the config fields' flags plus its data and output
    options: a field without an option, or an option without a field, fails here."""
    opts = [opt for param in get_command(app).commands["train"].params for opt in param.opts]
    assert len(opts) == len(set(opts))
    assert set(opts) - TRAIN_ONLY == set(CONFIG_FLAGS.values())
    for field in FIELDS:
        if field not in NOT_ON_THE_COMMAND_LINE:
            assert CONFIG_FLAGS[field] in opts, field


# A value other than the default for every config field on the command line, as typed there
# and as the config holds it.
GIVEN = {
    "model": (["--model", "some/model"], "some/model"),
    "method": (["--method", "sisa"], "sisa"),
    "shards": (["--shards", "3"], 3),
    "slices": (["--slices", "2"], 2),
    "budget": (["--budget", "2"], 2),
    "strategy": (["--strategy", "random"], "random"),
    "prior": (["--prior", "0.1,0.4,0.5"], [0.1, 0.4, 0.5]),
    "placement": (["--placement", "prior"], "prior"),
    "anchor": (["--anchor"], True),
    "layers_per_slice": (["--layers-per-slice", "2"], 2),
    "lora_r": (["--lora-r", "4"], 4),
    "lora_alpha": (["--lora-alpha", "5"], 5),
    "lora_dropout": (["--lora-dropout", "0.1"], 0.1),
    "use_rslora": (["--rslora"], True),
    "target_modules": (["--target-modules", "query, key"], ["query", "key"]),
    "epochs": (["--epochs", "2"], 2),
    "stage_steps": (["--stage-steps", "equal"], "equal"),
    "lr_schedule": (["--lr-schedule", "cosine"], "cosine"),
    "warmup_ratio": (["--warmup-ratio", "0.25"], 0.25),
    "best_epoch": (["--best-epoch", "--eval-size", "2"], True),
    "batch_size": (["--batch-size", "8"], 8),
    "learning_rate": (["--lr", "0.01"], 0.01),
    "max_seq_len": (["--max-seq-len", "16"], 16),
    "seed": (["--seed", "7"], 7),
    "serve_orderings": (["--serve-orderings", "best"], "best"),
    "ensemble": (["--ensemble", "mean"], "mean"),
    "allocation": (["--allocation", "equal"], "equal"),
    "feature_cache": (["--no-cache"], False),
    "feature_cache_dtype": (["--cache-dtype", "float16"], "float16"),
    "feature_cache_memory_gb": (["--cache-memory-gb", "1.5"], 1.5),
    "executor": (["--executor", "ray"], "ray"),
    "ray_address": (["--ray-address", "auto"], "auto"),
    "torch_threads": (["--torch-threads", "2"], 2),
}


def _train_config(monkeypatch, tmp_path, labelled_csv, args):
    """The config `s3t train ARGS` builds, stopped when it validates it (before any data or
    model loads)."""
    built = []

    def record(config, n_layers=None):
        built.append(config)
        raise typer.Exit(0)

    monkeypatch.setattr(S3TConfig, "validate", record)
    result = CliRunner().invoke(app, ["train", "--data", labelled_csv, "--out",
                                      str(tmp_path / "run"), *args])
    assert result.exit_code == 0 and len(built) == 1, result.output
    return built[0]


def test_train_gives_every_field_a_value_for_each_option():
    assert set(GIVEN) == set(CONFIG_FLAGS)


def test_train_without_options_builds_the_default_config(monkeypatch, tmp_path, labelled_csv):
    assert _train_config(monkeypatch, tmp_path, labelled_csv, []) == S3TConfig()


@pytest.mark.parametrize("field", sorted(GIVEN))
def test_each_train_option_sets_its_config_field(monkeypatch, tmp_path, labelled_csv, field):
    args, value = GIVEN[field]
    assert getattr(S3TConfig(), field) != value
    config = _train_config(monkeypatch, tmp_path, labelled_csv, args)
    assert getattr(config, field) == value


@pytest.mark.parametrize(("command", "flags"), [("train", CONFIG_FLAGS), ("demo", DEMO_FLAGS)])
def test_config_backed_options_show_the_fields_help(command, flags):
    options = {opt: param for param in get_command(app).commands[command].params
               for opt in param.opts}
    shown = _squash(_help(command))
    for field, flag in flags.items():
        assert flag in options, f"{command} has no {flag} for {field}"
        assert _squash(config_help(field)) in _squash(options[flag].help), (command, flag)
        assert _squash(config_help(field)) in shown, (command, flag)


def test_cli_defaults_are_the_config_defaults():
    """Flags whose default is a plain value take it from S3TConfig, so they cannot disagree."""
    options = {p.opts[0]: p for p in get_command(app).commands["train"].params}
    defaults = S3TConfig()
    dynamic = {"budget", "lora_alpha", "max_seq_len", "model", "prior", "target_modules",
               "feature_cache"}  # computed from other flags, or unset
    for field, flag in CONFIG_FLAGS.items():
        if field not in dynamic:
            assert options[flag].default == getattr(defaults, field), flag


@pytest.mark.parametrize(("changes", "field"), [
    ({"shards": 0}, "shards"),
    ({"slices": True}, "slices"),
    ({"seed": -1}, "seed"),
    ({"strategy": "nope"}, "strategy"),
    ({"method": "nope"}, "method"),
    ({"method": "sisa"}, "method"),
    ({"budget": 2, "strategy": "sisa"}, "budget"),
    ({"budget": 3, "strategy": "full"}, "budget"),
    ({"budget": 7}, "budget"),
    ({"prior": [0.5, 0.5]}, "prior"),
    ({"prior": [0.5, 0.5, 0.5]}, "prior"),
    ({"aggregation": "max"}, "aggregation"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"feature_cache_dtype": "int8"}, "feature_cache_dtype"),
    ({"feature_cache_memory_gb": -1}, "feature_cache_memory_gb"),
    ({"target_modules": []}, "target_modules"),
    ({"stage_steps": "steps"}, "stage_steps"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"warmup_ratio": -0.1}, "warmup_ratio"),
    ({"warmup_ratio": float("nan")}, "warmup_ratio"),
    ({"warmup_ratio": "0.1"}, "warmup_ratio"),
    ({"best_epoch": "yes"}, "best_epoch"),
    ({"use_rslora": 1}, "use_rslora"),
])
def test_invalid_values_raise_a_config_error_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as info:
        S3TConfig(**changes).validate()
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert field in str(info.value) and "--" not in str(info.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"stage_steps": "steps"}, "stage_steps must be one of epochs, equal, got 'steps'"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of constant, linear, cosine, got 'step'"),
    ({"warmup_ratio": 1.0}, "warmup_ratio must be a number in [0, 1), got 1.0"),
    ({"best_epoch": "yes"}, "best_epoch must be True or False, got 'yes'"),
])
def test_recipe_errors_say_what_is_valid(changes, message):
    with pytest.raises(ConfigError) as info:
        S3TConfig(**changes).validate()
    assert str(info.value) == message


def test_valid_recipes_pass():
    for schedule in ("constant", "linear", "cosine"):
        S3TConfig(stage_steps="equal", lr_schedule=schedule, warmup_ratio=0.0,
                  best_epoch=True, use_rslora=True).validate()
    S3TConfig(warmup_ratio=0.99).validate()


def test_layer_budget_error_names_fields_not_flags():
    with pytest.raises(ConfigError, match="lower slices or layers_per_slice") as info:
        S3TConfig(slices=3, layers_per_slice=2).validate(n_layers=4)
    assert info.value.field == "slices"
    S3TConfig(slices=2, budget=2, layers_per_slice=2).validate(n_layers=4)


def test_valid_plans_pass():
    S3TConfig(strategy="full", budget=6).validate()
    S3TConfig(strategy="bms", prior=[0.1, 0.6, 0.3], budget=6).validate()
    S3TConfig.baseline("sisa").validate()
    S3TConfig.baseline("full", slices=3, layers_per_slice=2).validate()


def test_baseline_keeps_an_unknown_method_for_validate_to_reject():
    with pytest.raises(ConfigError, match="method must be one of") as info:
        S3TConfig.baseline("nope").validate()
    assert info.value.field == "method"


def test_config_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ConfigError("shards", "shards must be >= 1")))
    assert (error.field, str(error)) == ("shards", "shards must be >= 1")


def test_config_round_trips_through_a_dict_and_has_no_json_method():
    config = S3TConfig(shards=3, prior=[0.2, 0.3, 0.5], target_modules=["query"])
    assert S3TConfig.from_dict(config.to_dict()) == config
    assert not hasattr(config, "to_json")


@pytest.fixture
def labelled_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,text,label\n" + "".join(f"s{i},text {i},{'ab'[i % 2]}\n" for i in range(12)))
    return str(path)


@pytest.mark.parametrize(("args", "expected"), [
    (["--lr", "-1"], "error: --lr: learning_rate must be a finite number > 0"),
    (["--cache-dtype", "int8"], "error: --cache-dtype: feature_cache_dtype must be one of"),
    (["--cache-memory-gb", "-1"], "error: --cache-memory-gb: feature_cache_memory_gb must"),
    (["--strategy", "nope"], "error: --strategy: strategy must be one of"),
    (["--method", "nope"], "error: --method: method must be one of"),
    (["--strategy", "sisa", "--budget", "2"], "error: --budget: budget must be 1"),
    (["--budget", "7"], "error: --budget: budget must be in [1, 6]"),
    (["--prior", "0.5,0.5"], "error: --prior: prior must have one probability per slice"),
    (["--prior", "x"], "error: --prior: expected 3 comma-separated probabilities"),
    (["--lora-dropout", "1"], "error: --lora-dropout: lora_dropout must be in [0, 1)"),
    (["--target-modules", ","], "error: --target-modules: target_modules must name"),
    (["--seed", "-1"], "error: --seed: seed must be an integer >= 0"),
    (["--stage-steps", "nope"], "error: --stage-steps: stage_steps must be one of epochs, equal"),
    (["--lr-schedule", "nope"], "error: --lr-schedule: lr_schedule must be one of constant,"),
    (["--warmup-ratio", "1"], "error: --warmup-ratio: warmup_ratio must be a number in [0, 1)"),
    (["--best-epoch"], "error: --best-epoch: best_epoch selects each stage's weights on the "
                       "validation split, but this run has no validation samples: give "
                       "evaluation data (s3t train --eval-size N"),
])
def test_train_reports_config_errors_as_its_flags(tmp_path, labelled_csv, args, expected):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", labelled_csv, "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected), result.stderr
    assert not out.exists()


def test_demo_reports_config_errors_as_its_flags():
    result = CliRunner().invoke(app, ["demo", "--strategy", "full", "--budget", "2", "--json"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --budget: budget must be slices! = 6")
