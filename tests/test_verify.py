"""`s3t verify`: stages retrained from the retained data in a fresh directory equal the run's
files bit for bit, and a stage swapped for one trained on a deleted sample is caught even when
the ledger's hashes were updated to match it (which audit alone cannot see)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_exactness import config, pick_victims
from tiny import make_tiny_bert, make_tiny_llama, toy_dataset, toy_instructions
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import S3TConfig
from s3t.data.partition import partition
from s3t.engine import S3T
from s3t.run import Run, lineage_chain
from s3t.run.files import ADAPTER_FILE, HEAD_FILE
from s3t.run.stages import served_stages
from s3t.verify import IDENTICAL, STALE, VerifySelectionError, verify_run


def invoke(*args):
    return CliRunner().invoke(app, ["verify", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert):
    """The same run before the deletion, after it (no retrain) and after forget + retrain."""
    root = tmp_path_factory.mktemp("verify")
    data = toy_dataset(72)
    cfg = config(tiny_bert)
    est = S3T(cfg, run_dir=root / "after").fit(data, progress=False)
    est.close()
    shutil.copytree(root / "after", root / "before")
    est = S3T.load(root / "after")
    victims = pick_victims(est, data)
    est.forget(victims)
    est.close()
    shutil.copytree(root / "after", root / "forgot")
    est = S3T.load(root / "after")
    est.retrain(progress=False)
    est.close()
    cells = partition(data.ids, data.groups, cfg.shards, cfg.slices, seed=cfg.seed)
    return {"root": root, "data": data, "victims": victims, "cells": cells}


def copy(runs, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(runs["root"] / name, target)
    return target


def tree_digest(run: Path) -> dict[str, str]:
    """sha256 of every file of a run (SQLite's -wal/-shm companions aside)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def served_chains(run: Path) -> list[str]:
    """Every stage whose chain is served (per the run's serve_orderings), ancestors included."""
    opened = Run.open(run, repair=False)
    try:
        records = {r.key: r for r in opened.ledger.stages(None)}
        served = served_stages(opened.ledger.routes(), records, opened.config.serve_orderings)
        return sorted({link.key for keys in served.values() for key in keys
                       for link in lineage_chain(key, records)})
    finally:
        opened.close()


@pytest.mark.parametrize("name", ["forgot", "after"])
def test_served_stages_are_identical_after_deletions(runs, name):
    run = runs["root"] / name
    before = tree_digest(run)
    report = verify_run(run, "served", progress=False)
    assert report.ok, [c.describe() for c in report.stages if not c.identical]
    # every served chain is checked, ancestors included, parents before children
    assert sorted(c.key for c in report.stages) == served_chains(run)
    assert [c.status for c in report.stages] == [IDENTICAL] * len(report.stages)
    for shard in {c.shard for c in report.stages}:
        depths = [c.depth for c in report.stages if c.shard == shard]
        assert depths == sorted(depths)
    if name == "after":  # the retrain restored full depth: B orderings x L stages per shard
        assert len(report.stages) == 2 * 3 * 3
    assert tree_digest(run) == before, "verify must never write the run directory"


def test_cli_verify_passes_with_json(runs):
    result = invoke(runs["root"] / "forgot", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is True and payload["selection"] == "served"
    assert payload["identical"] == len(payload["stages"]) > 0
    env = payload["environment"]  # the numeric environment the stages were rebuilt in
    assert (env["torch_threads"], env["deterministic"], env["device"]) == (1, True, "cpu")
    assert env["versions"]["torch"] and env["legacy_card"] is False


def swap_in_contaminated_stage(runs, tmp_path: Path) -> tuple[Path, str]:
    """Replace the weights of the deepest served stage of the victim's shard with those of the
    stage of the same prefix trained before the deletion (so on the deleted sample), and fix
    the ledger's hashes."""
    run = copy(runs, "after", tmp_path)
    shard = runs["cells"][runs["victims"][0]][0]
    opened = Run.open(run, repair=False)
    try:
        key = opened.ledger.routes()[shard]
        record = opened.live_stages()[key]
        assert any(v > 0 for v in record.versions), "the route must cover the deleted slice"
        old_key = f"{shard}-" + "_".join(f"{s}v0" for s in record.prefix)
        source = runs["root"] / "before" / "stages" / str(shard) / old_key
        target = opened.store.path(shard, key)
        hashes = dict(record.files)
        for name in (ADAPTER_FILE, HEAD_FILE):  # the weights; its own meta.json stays
            shutil.copyfile(source / name, target / name)
            hashes[name] = hashlib.sha256((target / name).read_bytes()).hexdigest()
        assert hashes != record.files
        opened.ledger.conn.execute("UPDATE stages SET files = ? WHERE key = ?",
                                   (json.dumps(hashes), key))
        assert opened.audit().ok, "the swap must be invisible to hash checks"
    finally:
        opened.close()
    return run, key


def test_a_stage_trained_on_a_deleted_sample_is_caught_and_named(runs, tmp_path):
    run, key = swap_in_contaminated_stage(runs, tmp_path)
    result = invoke(run)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    bad = [x for x in lines[:-1] if not x.endswith(IDENTICAL)]
    assert len(bad) == 1 and bad[0].startswith(key), lines
    assert "DIFFERENT: first differing tensor " in bad[0] and "max abs diff" in bad[0]
    assert len(lines) - 1 == len(served_chains(run)), "every served chain is checked"
    assert "1 NOT identical (1 torch thread(s), cpu, deterministic True)" in lines[-1]


def test_a_live_stage_on_replaced_slice_versions_is_stale(runs, tmp_path):
    """A pre-deletion stage put back live (files and hashes restored) cannot be rebuilt from
    the retained data: verify says so instead of comparing against the wrong data."""
    run = copy(runs, "forgot", tmp_path)
    shard, slice_ = runs["cells"][runs["victims"][0]]
    key = f"{shard}-{slice_}v0"  # the root stage on the victim's slice, erased by the forget
    shutil.copytree(runs["root"] / "before" / "stages" / str(shard) / key,
                    run / "stages" / str(shard) / key)
    before = Run.open(runs["root"] / "before", repair=False)
    files = before.live_stages()[key].files
    before.close()
    opened = Run.open(run, repair=False)
    opened.ledger.conn.execute("UPDATE stages SET status = 'live', files = ? WHERE key = ?",
                               (json.dumps(files), key))
    opened.close()
    report = verify_run(run, [key], progress=False)
    assert [(c.key, c.status) for c in report.stages] == [(key, STALE)]
    assert not report.ok
    result = invoke(run, "--stages", key)
    assert result.exit_code == 1 and "STALE" in result.stdout


def test_named_stages_are_checked_with_their_ancestors(runs):
    run = runs["root"] / "forgot"
    opened = Run.open(run, repair=False)
    deepest = max(opened.ledger.stages("live"), key=lambda r: (r.depth, r.key))
    records = {r.key: r for r in opened.ledger.stages(None)}
    opened.close()
    report = verify_run(run, [deepest.key], progress=False)
    assert report.ok
    assert [c.key for c in report.stages] == [r.key for r in lineage_chain(deepest.key, records)]


def test_bad_requests_are_one_line_errors(runs, tmp_path):
    run = runs["root"] / "forgot"
    opened = Run.open(run, repair=False)
    erased = opened.ledger.stages("erased")[0].key
    opened.close()
    for args, words in [(("--stages", "9-9v9"), "unknown stage"),
                        (("--stages", erased), "is erased"),
                        (("--stages", " , "), "at least one stage key"),
                        (("--served", "--all"), "at most one")]:
        result = invoke(run, *args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = invoke(tmp_path / "nothing")
    assert result.exit_code != 0 and "not an s3t run" in result.stderr
    with pytest.raises(VerifySelectionError, match="list of stage keys"):
        verify_run(run, erased, progress=False)  # one key, not in a list


def test_a_run_with_nothing_live_is_refused(runs, tmp_path):
    run = copy(runs, "forgot", tmp_path)
    cells = runs["cells"]
    one_per_cell = {cell: sid for sid, cell in sorted(cells.items())}
    opened = Run.open(run)
    opened.forget(list(one_per_cell.values()))
    opened.close()
    with pytest.raises(VerifySelectionError, match="no shard serves"):
        verify_run(run, "served", progress=False)
    result = invoke(run, "--all")
    assert result.exit_code == 2 and "no live stage" in result.stderr


def test_another_backbone_is_refused(runs, tmp_path):
    run = copy(runs, "forgot", tmp_path)
    card = json.loads((run / "s3t.json").read_text())
    card["config"]["model"] = make_tiny_bert(tmp_path / "other-bert", seed=1)
    (run / "s3t.json").write_text(json.dumps(card))
    result = invoke(run)
    assert result.exit_code == 2 and "differs from the one this run was trained with" in result.stderr


@pytest.mark.parametrize("family, kw", [
    ("bert", {"method": "sisa", "strategy": "sisa", "budget": 1}),
    ("bert", {"feature_cache": False}),
    ("bert", {"feature_cache_dtype": "float16", "feature_cache_memory_gb": 0.0}),
    ("llama", {"lora_r": 4, "lora_alpha": 8, "max_seq_len": 64}),
])
def test_every_method_family_and_feature_path_verifies(tiny_bert, tmp_path, family, kw):
    """The check rebuilds features the way the run's trainer did (cache or not, its storage
    precision, spilled or not) and trains SISA checkpoints and causal LMs alike."""
    if family == "llama":
        model, data = make_tiny_llama(tmp_path / "llama"), toy_instructions(16)
    else:
        model, data = tiny_bert, toy_dataset(24)
    cfg = S3TConfig(**{**config(model, shards=1, slices=2, budget=2, epochs=1).to_dict(), **kw})
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    est.close()
    report = verify_run(tmp_path / "run", "all", progress=False)
    assert report.ok, [c.describe() for c in report.stages]
    assert len(report.stages) == len(Run.open(tmp_path / "run", repair=False).live_stages())


def test_stages_are_rebuilt_with_the_thread_count_they_were_trained_with(
        tiny_bert, tmp_path, monkeypatch):
    """Float reductions depend on torch's thread count: verify trains each stage with the
    count its meta.json records (here 1, while the verifying process uses 2), then restores."""
    import torch

    import s3t.verify as verify_module

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        S3T(config(tiny_bert), run_dir=tmp_path / "run").fit(toy_dataset(36), progress=False).close()
    finally:
        torch.set_num_threads(before)
    seen = []
    real = verify_module.train_stage

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(verify_module, "train_stage", spy)
    torch.set_num_threads(2)
    try:
        report = verify_run(tmp_path / "run", "all", progress=False)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert report.ok and seen and set(seen) == {1}


def test_a_recorded_validation_score_is_rebuilt_and_checked(tiny_bert, tmp_path):
    """The 'validation' ensemble weighs a shard by its stages' recorded validation scores, so
    verify re-derives each score with the stage: one rewritten in the ledger is named."""
    data = toy_dataset(40)
    train, val = data.subset(range(32)), data.subset(range(32, 40))
    cfg = config(tiny_bert, shards=1, slices=2, budget=1, epochs=1)
    S3T(cfg, run_dir=tmp_path / "run").fit(train, val, progress=False).close()
    assert verify_run(tmp_path / "run", "all", progress=False).ok
    opened = Run.open(tmp_path / "run", repair=False)
    try:
        key, score = opened.ledger.conn.execute(
            "SELECT key, val_score FROM stages WHERE status = 'live' ORDER BY key").fetchone()
        assert score is not None, "a run with validation data records each stage's score"
        opened.ledger.conn.execute("UPDATE stages SET val_score = ? WHERE key = ?",
                                   (score + 0.25, key))
    finally:
        opened.close()
    report = verify_run(tmp_path / "run", "all", progress=False)
    bad = [c for c in report.stages if not c.identical]
    assert [c.key for c in bad] == [key] and not report.ok
    assert "recorded validation score" in bad[0].describe(), bad[0].describe()
