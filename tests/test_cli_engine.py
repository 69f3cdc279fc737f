"""The `s3t` train/predict/forget/retrain/status/audit commands, end to end on a tiny BERT."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from tiny import toy_dataset
from typer.testing import CliRunner

from s3t.cli import app


def write_csv(path, data, with_labels=True):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label", "group"] if with_labels else ["id", "text"])
        for i, sid in enumerate(data.ids):
            row = [sid, data.texts[i]]
            if with_labels:
                row += [data.label_names[data.labels[i]], data.groups[i] or ""]
            writer.writerow(row)
    return str(path)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("cli")
    train = write_csv(root / "train.csv", toy_dataset(48, groups=True))
    test = write_csv(root / "test.csv", toy_dataset(12, seed=9))
    run = root / "run"
    result = invoke("train", "--data", train, "--eval", test, "--out", run, "--model", tiny_bert,
                    "--shards", 2, "--slices", 2, "--epochs", 1, "--batch-size", 8, "--lora-r", 4,
                    "--lora-alpha", 4, "--rslora", "--target-modules", "query,key,value",
                    "--cache-dtype", "float16", "--cache-memory-gb", 0, "--json")
    assert result.exit_code == 0, result.output
    return root, run, json.loads(result.stdout)


@pytest.fixture
def run_copy(trained, tmp_path):
    root, run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return root, copy


def test_train_json_reports_what_was_trained(trained):
    _, _, payload = trained
    lora = {k: payload["config"][k] for k in ("lora_r", "lora_alpha", "use_rslora",
                                              "target_modules")}
    assert lora == {"lora_r": 4, "lora_alpha": 4, "use_rslora": True,
                    "target_modules": ["query", "key", "value"]}
    cache = {k: payload["config"][k] for k in ("feature_cache_dtype", "feature_cache_memory_gb")}
    assert cache == {"feature_cache_dtype": "float16", "feature_cache_memory_gb": 0.0}
    # the cache spilled every block under the run while training, and train removed it
    assert list((Path(payload["run_dir"]) / "feature-cache").iterdir()) == []
    from s3t.engine import S3T

    est = S3T.load(payload["run_dir"])
    adapter = est.stage_weights(est.ledger.stages("live")[0].key).adapter
    assert any(".key.lora_A" in k for k in adapter)
    ranks = {v.shape[0] if k.endswith("lora_A") else v.shape[1] for k, v in adapter.items()}
    assert ranks == {4}
    # cyclic L=2, B=2: orderings (0,1) and (1,0) share no prefix: 4 stages per shard
    assert payload["stages_trained"] == 2 * 4
    assert 0.0 <= payload["eval_accuracy"] <= 1.0
    assert payload["train_seconds"] > 0


def test_status_predict_forget_retrain_audit(run_copy):
    root, run = run_copy
    status = json.loads(invoke("status", run, "--json").stdout)
    assert status["live_shards"] == 2 and status["capacity"] == 1.0 and status["deleted"] == 0

    result = invoke("predict", run, "--data", root / "test.csv", "--json")
    assert result.exit_code == 0, result.output
    pred = json.loads(result.stdout)
    assert pred["n"] == 12 and 0.0 <= pred["accuracy"] <= 1.0

    result = invoke("predict", run, "--text", "red cat", "--text", "blue", "--json")
    assert [p["text"] for p in json.loads(result.stdout)["predictions"]] == ["red cat", "blue"]

    result = invoke("forget", run, "--ids", "s0001,s0002", "--json")
    assert result.exit_code == 0, result.output
    cert = json.loads(result.stdout)
    assert cert["samples"] == ["s0001", "s0002"] and cert["erased_stages"]

    status = json.loads(invoke("status", run, "--json").stdout)
    assert status["deleted"] == 2 and status["capacity"] < 1.0

    audit = invoke("audit", run, "--json")
    assert audit.exit_code == 0 and json.loads(audit.stdout)["ok"] is True

    result = invoke("retrain", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["capacity"] == 1.0


def test_forget_groups(run_copy):
    _, run = run_copy
    cert = json.loads(invoke("forget", run, "--groups", "user1", "--json").stdout)
    assert cert["samples"] == ["s0004", "s0005", "s0006", "s0007"]


def test_invalid_forget_exits_nonzero_and_changes_nothing(run_copy):
    _, run = run_copy
    before = invoke("status", run, "--json").stdout
    result = invoke("forget", run, "--ids", "s0001,missing-id")
    assert result.exit_code == 2
    assert "unknown sample ids: missing-id" in result.stderr
    assert invoke("status", run, "--json").stdout == before
    assert invoke("forget", run).exit_code == 2


def test_audit_fails_on_planted_violation(run_copy):
    _, run = run_copy
    stash = run.parent / "stash"
    shutil.copytree(run / "stages", stash)
    cert = json.loads(invoke("forget", run, "--ids", "s0003", "--json").stdout)
    key = cert["erased_stages"][0]
    shard = key.split("-")[0]
    shutil.copytree(stash / shard / key, run / "stages" / shard / key)
    result = invoke("audit", run)
    assert result.exit_code == 1
    assert key in result.output


def test_errors_are_one_line(tmp_path, tiny_bert):
    result = invoke("status", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and "not an s3t run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,a\n")
    result = invoke("train", "--data", bad, "--out", tmp_path / "r", "--model", tiny_bert)
    assert result.exit_code == 2 and "text" in result.stderr
    assert not (tmp_path / "r").exists()

    result = invoke("train", "--data", bad, "--out", tmp_path / "r", "--strategy", "nope")
    assert result.exit_code == 2 and "--strategy" in result.stderr


def test_predict_requires_exactly_one_source(run_copy):
    _, run = run_copy
    result = invoke("predict", run)
    assert result.exit_code == 2 and "exactly one" in result.stderr


def test_train_sisa_baseline_reports_dead_shard_after_forget(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "train.csv", toy_dataset(24))
    run = tmp_path / "sisa"
    result = invoke("train", "--data", train, "--out", run, "--model", tiny_bert, "--method",
                    "sisa", "--shards", 2, "--slices", 2, "--epochs", 1, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages_trained"] == 4
    cert = json.loads(invoke("forget", run, "--ids", "s0000", "--json").stdout)
    assert cert["live_shards"] == 1
    assert json.loads(invoke("status", run, "--json").stdout)["method"] == "sisa"
    assert invoke("train", "--data", train, "--out", tmp_path / "x", "--method", "nope"
                  ).exit_code == 2


def test_forget_status_audit_never_load_torch(run_copy):
    """A deletion costs ledger and file work only: no torch, no backbone, whatever its size."""
    import subprocess
    import sys

    _, run = run_copy
    code = ("import sys; from s3t.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['forget', {str(run)!r}, '--ids', 's0009', '--json']); "
            f"assert r.exit_code == 0, r.output; "
            f"assert CliRunner().invoke(app, ['status', {str(run)!r}]).exit_code == 0; "
            f"assert CliRunner().invoke(app, ['audit', {str(run)!r}]).exit_code == 0; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_retrain_repairs_a_damaged_stage_file(run_copy):
    _, run = run_copy
    stage = next(p for p in sorted((run / "stages").glob("*/*")) if p.is_dir())
    (stage / "head.safetensors").write_bytes(b"damaged")
    status = invoke("status", run)
    assert status.exit_code == 1 and "s3t retrain" in status.stderr
    result = invoke("retrain", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quarantined_stages"] == [stage.name]
    assert invoke("audit", run).exit_code == 0
