"""Engine behaviour on a tiny BERT: isolation, persistence, serving, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_exactness import stage_by_stage_changes, stage_lora
from tiny import make_tiny_bert, toy_dataset

from s3t.config import S3TConfig
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone
from s3t.run import ForgetRequestError, IntegrityError, NoLiveShardError, NotARunError


def config(model: str, **kw) -> S3TConfig:
    base = dict(model=model, shards=2, slices=2, budget=2, epochs=2, batch_size=8,
                learning_rate=1e-2, seed=3)
    base.update(kw)
    return S3TConfig(**base)


@pytest.fixture
def fitted(tiny_bert, tmp_path):
    data = toy_dataset(48, groups=True)
    est = S3T(config(tiny_bert), run_dir=tmp_path / "run").fit(
        data, eval_data=toy_dataset(12, seed=5), progress=False)
    return est, data


def snapshot(est: S3T) -> dict:
    status = est.status()
    return {"status": status, "stage_dirs": est.store.on_disk(),
            "certs": sorted(p.name for p in (est.run_dir / "certificates").glob("*"))
            if (est.run_dir / "certificates").exists() else []}


@pytest.mark.parametrize("allocation", ["equal", "growing", "all"])
def test_stage_changes_only_its_layer_groups_and_head(tiny_bert, tmp_path, allocation):
    cfg = config(tiny_bert, slices=3, budget=1, strategy="cyclic", allocation=allocation)
    for backbone, depth, changed, _ in stage_by_stage_changes(cfg, toy_dataset(30), 3):
        allowed_lora = stage_lora(backbone, depth)
        head = {k for k, _ in backbone.model.named_parameters()
                if k.startswith(("classifier", "bert.pooler"))}
        assert changed, "training must change something"
        assert changed <= allowed_lora | head, sorted(changed - allowed_lora - head)
        assert any("lora_B" in k for k in changed), "the stage's own adapters must train"


def test_parameters_are_selected_by_exact_layer_index(tmp_path):
    """With 12 layers, group of layer 1 must not pick up layers 10 and 11 (substring bug)."""
    model = make_tiny_bert(tmp_path / "deep", layers=12, hidden=16)
    cfg = config(model, slices=11, layers_per_slice=1, budget=1)
    backbone = AdaptedBackbone(cfg, num_labels=3)
    for group in range(1, 12):
        indices = {backbone.layer_index(k) for k in backbone.group_parameters(group)}
        assert indices == {12 - group}


def test_save_load_round_trip_gives_identical_predictions(fitted, tmp_path):
    est, _ = fitted
    texts = ["red cat", "blue sun moon", "green tree fish"]
    before = est.predict(texts).probabilities
    est.save(tmp_path / "copy")
    loaded = S3T.load(tmp_path / "copy")
    np.testing.assert_array_equal(loaded.predict(texts).probabilities, before)
    again = S3T.load(est.run_dir)
    np.testing.assert_array_equal(again.predict(texts).probabilities, before)


def test_tampered_stage_file_is_refused(fitted):
    est, _ = fitted
    record = est.ledger.stages("live")[0]
    path = est.store.path(record.shard, record.key) / "adapter.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="altered"):
        S3T.load(est.run_dir)
    unverified = S3T.load(est.run_dir, verify=False)
    with pytest.raises(IntegrityError):
        unverified.predict(["red"] * 1) if record.key in est.ledger.routes().values() else \
            unverified.stage_weights(record.key)
    assert not unverified.audit().ok


def test_missing_stage_file_is_refused(fitted):
    est, _ = fitted
    record = est.ledger.stages("live")[0]
    (est.store.path(record.shard, record.key) / "head.safetensors").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        S3T.load(est.run_dir)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(NotARunError, match="not an s3t run"):
        S3T.load(tmp_path)
    (tmp_path / "s3t.json").write_text("{broken")
    (tmp_path / "ledger.sqlite").write_text("")
    with pytest.raises(NotARunError, match="damaged"):
        S3T.load(tmp_path)


def test_unknown_ids_change_nothing(fitted):
    est, data = fitted
    before = snapshot(est)
    with pytest.raises(ForgetRequestError, match="unknown sample ids: nope"):
        est.forget([data.ids[0], "nope"])
    assert snapshot(est) == before
    assert est.ledger.find_samples([data.ids[0]])[data.ids[0]][2] is None


def test_empty_request_and_unknown_group_change_nothing(fitted):
    est, _ = fitted
    before = snapshot(est)
    with pytest.raises(ForgetRequestError, match="empty"):
        est.forget([])
    with pytest.raises(ForgetRequestError, match="unknown groups: ghost"):
        est.forget(groups=["ghost"])
    assert snapshot(est) == before


def test_forget_is_idempotent(fitted):
    est, data = fitted
    first = est.forget([data.ids[0]])
    second = est.forget([data.ids[0]])
    assert first["samples"] == [data.ids[0]]
    assert second == first, "re-issuing a request returns its original certificate"
    assert est.status()["deleted"] == 1 and est.status()["deletion_requests"] == 1
    # a request mixing a deleted and a new sample is a new request
    third = est.forget([data.ids[0], data.ids[1]])
    assert third["samples"] == [data.ids[1]] and third["already_deleted"] == [data.ids[0]]
    assert third["request_id"] != first["request_id"]


def test_forget_group_deletes_all_members_and_writes_certificate(fitted):
    est, data = fitted
    members = [i for i, g in zip(data.ids, data.groups, strict=True) if g == "user2"]
    cert = est.forget(groups=["user2"])
    assert cert["samples"] == sorted(members)
    assert len(cert["cells"]) == 1, "a group lives in one slice"
    saved = json.loads((est.run_dir / "certificates" / f"{cert['request_id']}.json").read_text())
    assert saved == cert
    assert est.ledger.certificates()[-1].to_dict() == cert
    assert set(cert) >= {"request_id", "time", "samples", "cells", "erased_stages",
                         "routes_before", "routes_after", "duration_ms"}


def test_predict_refuses_when_no_shard_is_live_and_retrain_restores(fitted):
    est, data = fitted
    est.forget(data.ids)  # everything: every slice is hit
    assert est.status()["live_shards"] == 0
    with pytest.raises(NoLiveShardError, match="retrain"):
        est.predict(["red"])
    est.retrain(progress=False)
    assert est.status()["live_shards"] == 2
    assert est.audit().ok


def test_vote_aggregation_averages_one_hot_votes(tiny_bert, tmp_path):
    est = S3T(config(tiny_bert, shards=3, aggregation="vote"), run_dir=tmp_path / "r").fit(
        toy_dataset(36), progress=False)
    probs = est.predict(["red cat", "blue"]).probabilities
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert set(np.round(probs * 3).ravel()) <= {0.0, 1.0, 2.0, 3.0}
    assert np.allclose(probs * 3, np.round(probs * 3))


def test_fit_refuses_existing_run_and_bad_config(fitted, tiny_bert):
    est, data = fitted
    with pytest.raises(FileExistsError, match="already holds"):
        S3T(config(tiny_bert), run_dir=est.run_dir).fit(data, progress=False)
    with pytest.raises(ValueError, match="exceeds the backbone"):
        S3T(config(tiny_bert, slices=5, budget=1)).fit(data, progress=False)
    with pytest.raises(ValueError, match="shards must be"):
        S3T(config(tiny_bert, shards=0)).fit(data, progress=False)


def test_stage_validation_scores_and_status(fitted):
    est, _ = fitted
    scores = [r.val_score for r in est.ledger.stages("live")]
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores)
    status = est.status()
    assert status["capacity"] == 1.0 and status["live_shards"] == 2


def test_tiny_model_learns_the_toy_task(tiny_bert, tmp_path):
    """Guards against silent training bugs: chance is 1/3."""
    cfg = S3TConfig(model=tiny_bert, shards=1, slices=2, budget=2, epochs=3, batch_size=8,
                    learning_rate=1e-2)
    est = S3T(cfg, run_dir=tmp_path / "r").fit(toy_dataset(96), progress=False)
    assert est.score(toy_dataset(60, seed=11)) > 0.5


def test_serving_uses_merged_dense_layers_and_swaps_routes_after_forget(fitted):
    est, data = fitted
    est.predict(["red"])
    before = dict(est.served())
    assert all(type(r.layers[-1].attention.self.query) is torch.nn.Linear
               for r in before.values()), "served layers must be plain dense Linear layers"
    cert = est.forget([data.ids[0]])
    est.predict(["red"])
    after = est.served()
    for shard, key in cert["routes_after"].items():
        route = after.get(int(shard))
        assert (route.stage if route else None) == key
        if key == cert["routes_before"][shard]:
            assert route is before[int(shard)], "unchanged routes are reused, not rebuilt"


def test_a_failed_fit_leaves_no_half_made_run(tiny_bert, tmp_path, monkeypatch):
    import s3t.train.local as local_executor

    def boom(*args, **kwargs):
        raise RuntimeError("training failed")

    monkeypatch.setattr(local_executor, "train_stage", boom)
    with pytest.raises(RuntimeError, match="training failed"):
        S3T(config(tiny_bert), run_dir=tmp_path / "r").fit(toy_dataset(24), progress=False)
    assert not (tmp_path / "r").exists()


def test_single_class_data_is_refused(tiny_bert, tmp_path):
    data = toy_dataset(24)
    one = dataclasses.replace(data, labels=[0] * len(data))
    with pytest.raises(ValueError, match="single class"):
        S3T(config(tiny_bert), run_dir=tmp_path / "r").fit(one, progress=False)
