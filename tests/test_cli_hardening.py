"""Hardening of the command line: ids that --ids cannot spell, damaged or unwritable runs,
silent nonsense (diverged training, one class, bad --eval-size, --out in the wrong place),
each refused or reported as one ``error: ...`` line, never a traceback."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from tiny import toy_dataset
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import ConfigError, S3TConfig

COMMA_ID, SPACE_ID = "a,b", " lead"
TRAIN_FLAGS = ("--shards", 1, "--slices", 2, "--epochs", 1, "--batch-size", 8, "--lora-r", 4)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_csv(path: Path, data) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label", "group"])
        for i, sid in enumerate(data.ids):
            writer.writerow([sid, data.texts[i], data.label_names[data.labels[i]],
                             data.groups[i] or ""])
    return str(path)


def one_line_error(result, code: int | tuple[int, ...]) -> str:
    codes = code if isinstance(code, tuple) else (code,)
    assert result.exit_code in codes, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def odd_ids_csv(path: Path) -> str:
    """toy data whose first two ids hold a comma and a leading space; one group has a comma."""
    data = toy_dataset(24, groups=True)
    data.ids[0], data.ids[1] = COMMA_ID, SPACE_ID
    data.groups[8:12] = ["team,2"] * 4
    return write_csv(path, data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("hardening")
    train = odd_ids_csv(root / "train.csv")
    run = root / "run"
    run.mkdir()  # an existing empty directory is a fine --out
    result = invoke("train", "--data", train, "--out", run, "--model", tiny_bert, *TRAIN_FLAGS,
                    "--json")
    assert result.exit_code == 0, result.output
    return root, run


@pytest.fixture
def run_copy(trained, tmp_path):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def status(run: Path) -> dict:
    result = invoke("status", run, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- 1. ids with commas or surrounding spaces -----------------------------------------------

def test_loaders_keep_ids_exactly(tmp_path):
    from s3t.data.loaders import load_table

    data = load_table(odd_ids_csv(tmp_path / "d.csv"))
    assert data.ids[:2] == [COMMA_ID, SPACE_ID]
    rows = [{"id": SPACE_ID, "text": "red", "label": "x"}, {"id": "b ", "text": "sun", "label": "y"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_table(jsonl).ids == [SPACE_ID, "b "]
    blank = tmp_path / "blank.csv"
    blank.write_text("id,text\n  ,hi\n")
    with pytest.raises(ValueError, match="line 2: empty id"):
        load_table(blank)


def test_forget_ids_file_keeps_commas_and_spaces(run_copy, tmp_path):
    result = invoke("forget", run_copy, "--ids", COMMA_ID)  # splits on the comma: refused
    assert "unknown sample ids" in one_line_error(result, 2)
    assert status(run_copy)["deleted"] == 0

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{COMMA_ID}\r\n\n{SPACE_ID}\n")  # CRLF and an empty line
    result = invoke("forget", run_copy, "--ids-file", ids_file, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == sorted([COMMA_ID, SPACE_ID])
    assert status(run_copy)["deleted"] == 2


def test_forget_json_list_from_stdin_and_groups_file(run_copy, tmp_path):
    result = CliRunner().invoke(app, ["forget", str(run_copy), "--ids-file", "-", "--ids",
                                      "s0002", "--json"], input=json.dumps([SPACE_ID]))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == [SPACE_ID, "s0002"]

    groups = tmp_path / "groups.txt"
    groups.write_text("team,2\n")
    result = invoke("forget", run_copy, "--groups-file", groups, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == ["s0008", "s0009", "s0010", "s0011"]


def test_forget_help_points_to_ids_file():
    text = " ".join(CliRunner().invoke(app, ["forget", "--help"]).output.split())
    assert "for ids with commas or surrounding spaces use --ids-file" in text
    assert "JSON list of strings" in text


def test_bad_ids_files_are_one_line(run_copy, tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('["a", ')
    numbers = tmp_path / "numbers.json"
    numbers.write_text("[1, 2]")
    for args in (["--ids-file", tmp_path / "absent.txt"], ["--ids-file", bad_json],
                 ["--groups-file", numbers], ["--ids-file", "-", "--groups-file", "-"]):
        line = one_line_error(invoke("forget", run_copy, *args), 2)
        assert "--ids-file" in line or "--groups-file" in line
    assert status(run_copy)["deleted"] == 0


# --- 2. damaged, unwritable or busy runs: one line ------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_ledger_is_one_line(run_copy, damage):
    ledger = run_copy / "ledger.sqlite"
    conn = sqlite3.connect(ledger)  # everything into the main file, then damage it
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for extra in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (run_copy / extra).unlink(missing_ok=True)
    content = ledger.read_bytes()
    ledger.write_bytes(b"not a database " * 200 if damage == "garbage" else content[:len(content) // 3])
    for args in (["status"], ["forget", "--ids", "s0003"], ["audit"], ["predict", "--text", "red"]):
        line = one_line_error(invoke(args[0], run_copy, *args[1:]), 7)  # its own status
        assert "ledger.sqlite is damaged" in line and "--replay" in line  # never a bare restore


@pytest.mark.parametrize("change", [
    lambda info: info.update(config=[]),
    lambda info: info["config"].update(shards="x"),
    lambda info: info.update(label_names="abc"),
    lambda info: info.update(orderings=[[0, 5]]),
    lambda info: info.clear() or info.update(x=1),
])
def test_run_card_with_wrong_types_is_one_line(run_copy, change):
    card = run_copy / "s3t.json"
    info = json.loads(card.read_text())
    change(info)
    card.write_text(json.dumps(info))
    for args in (["status"], ["forget", "--ids", "s0003"], ["audit"], ["retrain"]):
        assert "s3t.json is damaged" in one_line_error(invoke(args[0], run_copy, *args[1:]), 2)
    card.write_text("[]")
    assert "s3t.json is damaged" in one_line_error(invoke("status", run_copy), 2)


def test_concurrent_retrain_is_one_line(run_copy):
    with open(run_copy / ".retrain.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_line_error(invoke("retrain", run_copy), 1)
    assert "another retrain" in line and "is running" in line


def test_read_only_ledger_is_one_line(run_copy, monkeypatch):
    """SQLite's own refusal to write (as in a read-only directory), simulated with a read-only
    connection so that it also holds when the tests run as root."""
    from s3t.run import ledger as ledger_module

    connect = sqlite3.connect
    monkeypatch.setattr(ledger_module.sqlite3, "connect", lambda path, *a, **kw: connect(
        path, *a, **kw) if kw.get("uri") else connect(f"file:{path}?mode=ro", *a, uri=True, **kw))
    line = one_line_error(invoke("forget", run_copy, "--ids", "s0003"), 4)
    assert f"the run directory {run_copy} is not writable" in line and "backup" not in line
    monkeypatch.undo()
    assert status(run_copy)["deleted"] == 0


def test_permission_error_in_run_is_one_line(run_copy, monkeypatch):
    from s3t.run import Run

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(run_copy / "stages"))

    monkeypatch.setattr(Run, "open", denied)
    line = one_line_error(invoke("status", run_copy), 4)
    assert f"the run directory {run_copy} is not writable" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_run_directory_is_one_line(run_copy):
    paths = [run_copy, *run_copy.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        line = one_line_error(invoke("forget", run_copy, "--ids", "s0003"), 4)
        assert "not writable" in line
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)


def test_out_under_a_file_or_in_a_non_empty_directory(tmp_path, trained):
    root, run = trained
    train = str(root / "train.csv")
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for out, expected in ((afile / "run", "afile is a file"), (afile, "afile is a file"),
                          (tmp_path / "full", "not empty"), (run, "already holds an s3t run")):
        assert expected in one_line_error(invoke("train", "--data", train, "--out", out), 2)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_csv_field_over_the_csv_module_default_limit(tmp_path):
    from s3t.data.loaders import load_table

    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerow(["long", "word " * 40_000, "x"])  # 200,000 characters
        writer.writerow(["short", "red", "y"])
    data = load_table(path)
    assert data.ids == ["long", "short"] and len(data.texts[0]) == 200_000


def test_max_seq_len_beyond_position_embeddings(tmp_path, trained, tiny_bert):
    from s3t.models.adapted import AdaptedBackbone

    with pytest.raises(ValueError, match=r"max_seq_len=65 exceeds the 64 positions"):
        AdaptedBackbone(S3TConfig(model=tiny_bert, slices=2, max_seq_len=65), num_labels=3)
    AdaptedBackbone(S3TConfig(model=tiny_bert, slices=2, max_seq_len=64), num_labels=3)
    root, _ = trained
    out = tmp_path / "r"
    result = invoke("train", "--data", root / "train.csv", "--out", out, "--model", tiny_bert,
                    "--max-seq-len", 65)
    line = one_line_error(result, 2)
    assert line.startswith("error: --max-seq-len: ") and "64" in line
    assert not out.exists()


# --- 3. nonsense that used to be accepted silently ------------------------------------------

@pytest.mark.parametrize("lr", [math.inf, math.nan, -math.inf])
def test_config_rejects_non_finite_learning_rate(lr):
    with pytest.raises(ConfigError, match="learning_rate must be a finite number") as info:
        S3TConfig(learning_rate=lr).validate()
    assert info.value.field == "learning_rate"


def test_lr_inf_is_refused_before_training(tmp_path, trained):
    root, _ = trained
    result = invoke("train", "--data", root / "train.csv", "--out", tmp_path / "r", "--lr", "inf")
    assert one_line_error(result, 2).startswith("error: --lr: ")
    assert not (tmp_path / "r").exists()


def test_diverging_training_stops_with_a_clear_error(tmp_path, trained, tiny_bert):
    root, _ = trained
    out = tmp_path / "r"
    result = invoke("train", "--data", root / "train.csv", "--out", out, "--model", tiny_bert,
                    *TRAIN_FLAGS, "--lr", "1e30", "--json")  # --json: no progress bar
    line = one_line_error(result, 2)
    assert line.startswith("error: --lr: training diverged in shard 0, stage (")
    assert "lower learning_rate" in line
    assert not out.exists()  # nothing of the failed run is left to block a second try


def test_train_stage_refuses_non_finite_weights(tiny_bert):
    """One optimiser step at an infinite learning rate: the loss it saw was finite."""
    from s3t.models.adapted import AdaptedBackbone
    from s3t.plan.methods import Method
    from s3t.train.features import OnTheFlyFeatures
    from s3t.train.stage_trainer import TrainingDivergedError, train_stage

    config = S3TConfig(model=tiny_bert, shards=1, slices=1, budget=1, epochs=1, batch_size=64,
                       learning_rate=math.inf)  # never validated: train_stage is the last line
    backbone = AdaptedBackbone(config, num_labels=3)
    data = toy_dataset(12)
    features = OnTheFlyFeatures(backbone)
    features.ensure((0, 0), 0, data.ids, data.texts)
    with pytest.raises(TrainingDivergedError, match=r"stage \(0,\): the trained weights are not "
                       r"finite; lower learning_rate \(now inf\)"):
        train_stage(backbone, features, shard=0, prefix=(0,), ancestors=[],
                    method=Method("s3t", 1), sample_ids=data.ids, labels=data.labels)


def test_one_class_training_data_is_refused(tmp_path, tiny_bert):
    path = tmp_path / "one.csv"
    path.write_text("id,text,label\n" + "".join(f"s{i},red cat,x\n" for i in range(8)))
    out = tmp_path / "r"
    result = invoke("train", "--data", path, "--out", out, "--model", tiny_bert)
    assert "single class" in one_line_error(result, 2)
    assert not out.exists()


@pytest.mark.parametrize("size", ["-1", "nan", "inf", "2.5", "-0.5"])
def test_bad_eval_size_is_refused(tmp_path, trained, size):
    root, _ = trained
    result = invoke("train", "--data", root / "train.csv", "--out", tmp_path / "r",
                    "--eval-size", size)
    assert one_line_error(result, 2).startswith("error: --eval-size: ")
    assert not (tmp_path / "r").exists()
