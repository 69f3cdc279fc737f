"""Exactness under concurrency and failures: races with retrain, open readers, damaged
files, interrupted erasure; and serving-level equality with scratch training."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from test_exactness import config, pick_victims, scratch_chain, served
from tiny import toy_dataset

import s3t.train.local as local_executor
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone


@pytest.fixture
def fitted(tiny_bert, tmp_path):
    data = toy_dataset(72, groups=True)
    cfg = config(tiny_bert)
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    return est, data, cfg


def test_served_probabilities_equal_a_scratch_trained_ensemble(fitted):
    est, data, cfg = fitted
    victims = pick_victims(est, data)
    est.forget(victims)
    texts = ["red cat", "blue fish moon", "green tree star sun"]
    got = est.predict(texts).probabilities

    backbone = AdaptedBackbone(cfg, num_labels=3)
    batch = backbone.encode(texts)
    bounds = backbone.boundaries(batch)
    method = cfg.training_method()
    chains = [scratch_chain(cfg, data, set(victims), shard, prefix)
              for shard, (prefix, _) in sorted(served(est).items())]
    probs = []
    with torch.no_grad():
        for chain in chains:
            backbone.load_route(chain, method)
            active = method.active_groups(len(chain))  # 'all' switches on every group
            logits = backbone.top(bounds[active], batch["attention_mask"], active)
            probs.append(torch.softmax(logits, dim=-1).double().numpy())
    # Serving merges LoRA into dense weights (x(W + sBA) instead of xW + s(xA)B): equal up
    # to float rounding; the weights themselves are compared bitwise elsewhere. The default
    # ensemble ('depth') weighs each shard by its served depth.
    depths = [len(chain) for chain in chains]
    assert cfg.ensemble == "depth" and len(set(depths)) > 1, "the victims demote a shard"
    np.testing.assert_allclose(got, np.average(probs, axis=0, weights=depths), rtol=0, atol=1e-6)


def test_deletion_during_retrain_never_puts_a_contaminated_stage_live(fitted, monkeypatch):
    est, data, _ = fitted
    est.forget([pick_victims(est, data)[0]])
    other = S3T.load(est.run_dir)
    real_train = local_executor.train_stage
    calls = []

    def train_then_delete(*args, **kwargs):
        result = real_train(*args, **kwargs)
        if not calls:  # while the first stage trains, another process deletes from its data
            calls.append(kwargs["sample_ids"][0])
            other.forget([kwargs["sample_ids"][0]])
        return result

    monkeypatch.setattr(local_executor, "train_stage", train_then_delete)
    summary = est.retrain(progress=False)
    assert summary["stages_discarded"], "the stage that saw the deleted sample must be dropped"
    report = est.audit()
    assert report.ok, report.violations
    monkeypatch.setattr(local_executor, "train_stage", real_train)
    est.retrain(progress=False)
    assert est.status()["capacity"] == 1.0 and est.audit().ok


def test_deletions_go_on_while_a_reader_blocks_the_scrub(fitted):
    """A long read snapshot (a backup tool, a sqlite3 shell) leaves each checkpoint partial,
    and the database file alone need not read as one meanwhile: that is not a swapped
    ledger, so later deletions are accepted and the run audits clean once it closes."""
    est, data, _ = fitted
    reader = sqlite3.connect(est.run_dir / "ledger.sqlite")
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM samples").fetchone()
    for victim in (data.ids[3], data.ids[5], data.ids[7]):
        assert est.forget([victim])["ledger_scrubbed"] is False
    reader.execute("ROLLBACK")
    reader.close()
    assert est.audit().ok


def test_open_reader_blocks_scrub_and_audit_reports_it(fitted):
    est, data, _ = fitted
    reader = sqlite3.connect(est.run_dir / "ledger.sqlite")
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM samples").fetchone()
    cert = est.forget([data.ids[3]])
    assert cert["ledger_scrubbed"] is False
    assert not est.audit().ok
    reader.execute("ROLLBACK")
    reader.close()
    report = est.audit()
    assert report.ok, report.violations
    assert est.ledger.get_meta("scrub_pending") is None


def test_damaged_stage_is_quarantined_and_rebuilt_by_retrain(fitted):
    est, _, _ = fitted
    record = est.ledger.stages("live")[0]
    before = est.stage_weights(record.key)
    (est.store.path(record.shard, record.key) / "head.safetensors").write_bytes(b"garbage")
    damaged = S3T.load(est.run_dir, verify=False)
    summary = damaged.retrain(progress=False)
    assert summary["quarantined_stages"] == [record.key]
    assert damaged.audit().ok
    rebuilt = damaged.stage_weights(record.key)
    for k in before.adapter:
        assert torch.equal(before.adapter[k], rebuilt.adapter[k])


def test_interrupted_erasure_is_finished_by_the_next_forget(fitted, monkeypatch):
    est, data, _ = fitted
    victims = pick_victims(est, data)
    real_erase = est.store.erase

    def failing_erase(shard, key, sync=True):
        raise OSError("disk went away")

    monkeypatch.setattr(est.store, "erase", failing_erase)
    failed = est.forget([victims[0]])  # committed: the caller gets the certificate, not an error
    assert failed["files_erased"] is False and "disk went away" in failed["erase_error"]
    assert (est.run_dir / "certificates" / f"{failed['request_id']}.json").is_file()
    assert est.status()["deleted"] == 1, "the deletion was committed before erasure"
    assert est.forget([victims[0]]) == failed, "re-issuing returns the original certificate"
    assert not est.audit().ok, "erased stages' files are still on disk"
    monkeypatch.setattr(est.store, "erase", real_erase)
    cert = est.forget([victims[1]])
    assert cert["files_erased"] is True
    assert est.audit().ok


def test_crash_after_commit_is_repaired_on_load(fitted, monkeypatch):
    est, data, _ = fitted
    monkeypatch.setattr(est.store, "erase", lambda shard, key, sync=True: False)  # "crash" first
    cert = est.forget([pick_victims(est, data)[0]])
    assert cert["files_erased"] is False
    reopened = S3T.load(est.run_dir)  # repair=True sweeps
    assert reopened.audit().ok


def test_group_keys_and_deleted_labels_are_not_stored(fitted):
    est, data, _ = fitted
    est.forget(groups=["user3"])
    raw = b"".join(p.read_bytes() for p in est.run_dir.glob("ledger.sqlite*"))
    assert b"user3" not in raw and b"user4" not in raw
    rows = est.ledger.conn.execute(
        "SELECT label, input FROM samples WHERE deleted_version IS NOT NULL").fetchall()
    assert rows and all(r == (None, None) for r in rows)
