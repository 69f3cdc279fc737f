"""The exactness invariant: after forgetting, what is served equals, bit for bit, a model
trained from scratch (same seeds) on what remains; nothing on disk saw a deleted sample."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Sequence

import pytest
import torch
from tiny import toy_dataset

from s3t.config import S3TConfig
from s3t.data.partition import partition
from s3t.data.samples import Dataset
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone
from s3t.run import lineage_chain
from s3t.run.numeric import new_env
from s3t.train.features import FeatureCache
from s3t.train.numeric import numeric_env
from s3t.train.stage_trainer import train_stage


def config(model: str, **kw) -> S3TConfig:
    base = dict(model=model, shards=2, slices=3, budget=3, epochs=2, batch_size=8,
                learning_rate=1e-2, lora_dropout=0.1, seed=7)
    base.update(kw)
    return S3TConfig(**base)


# Every recipe option on at once (S3TConfig fields); best_epoch needs validation samples. The
# higher rate makes the tiny model's validation accuracy move, so best_epoch keeps first,
# middle and last passes (and breaks ties) across the stages rather than always the first.
ALL_OPTIONS = dict(stage_steps="equal", lr_schedule="cosine", warmup_ratio=0.2, best_epoch=True,
                   use_rslora=True, learning_rate=0.1)
RECIPES = {"default": {}, "equal": dict(allocation="equal"), "growing": dict(allocation="growing"),
           "all": dict(allocation="all"), "all-options": ALL_OPTIONS}


def validation_set() -> Dataset:
    """Validation samples v00..v11 (never deletable)."""
    held_out = toy_dataset(12, seed=9)
    return Dataset([f"v{i:02d}" for i in range(12)], held_out.texts, held_out.labels,
                   label_names=held_out.label_names)


def scratch_chain(cfg: S3TConfig, data, deleted: set[str], shard: int, prefix,
                  val_data: Dataset | None = None, cells: dict[str, tuple[int, int]] | None = None,
                  anchors: Sequence[str] = ()) -> list:
    """Train ``prefix`` of ``shard`` from scratch on the retained data: an independent path
    (``val_data``: the validation samples, in the run's order, for best_epoch), in the numeric
    environment a run with ``cfg`` records (its torch threads, deterministic kernels).

    ``cells``: each sample id's (shard, slice), computed by the caller (default: the seeded
    partition of all of ``data``); ``anchors``: an anchor set's ids, sorted, which every stage
    trains on before its prefix's cells, as one feature block (``S3TConfig.anchor``)."""
    with numeric_env(new_env(cfg.torch_threads)):
        if cells is None:
            cells = partition(data.ids, data.groups, cfg.shards, cfg.slices, seed=cfg.seed)
        return _scratch_chain(cfg, data, deleted, shard, prefix, val_data, cells, list(anchors))


def _scratch_chain(cfg: S3TConfig, data, deleted: set[str], shard: int, prefix,
                   val_data: Dataset | None, cells: dict[str, tuple[int, int]],
                   anchors: list[str]) -> list:
    backbone = AdaptedBackbone(cfg, num_labels=len(data.label_names))
    features = FeatureCache(backbone, chunk_size=cfg.batch_size)
    label = dict(zip(data.ids, data.labels, strict=True))
    text = dict(zip(data.ids, data.texts, strict=True))
    val = None
    if val_data is not None:
        rows = sorted(zip(val_data.ids, val_data.labels, val_data.texts, strict=True))
        val_ids = [f"eval:{r[0]}" for r in rows]
        features.ensure("eval", 0, val_ids, [r[2] for r in rows])
        val = val_ids, [r[1] for r in rows]
    if anchors:
        features.ensure("anchor", 0, anchors, [text[i] for i in anchors])
    chain = []
    for depth in range(1, len(prefix) + 1):
        ids = list(anchors)
        for s in prefix[:depth]:
            cell_ids = sorted(i for i, c in cells.items() if c == (shard, s) and i not in deleted)
            features.ensure((shard, s), 0, cell_ids, [text[i] for i in cell_ids])
            ids += cell_ids
        result = train_stage(backbone, features, shard=shard, prefix=prefix[:depth],
                             ancestors=chain, method=cfg.training_method(),
                             sample_ids=ids, labels=[label[i] for i in ids], val=val)
        chain.append(result.weights)
    return chain


def assert_same_weights(a, b) -> None:
    for part in ("adapter", "head"):
        left, right = getattr(a, part), getattr(b, part)
        assert left.keys() == right.keys()
        for k in left:
            assert torch.equal(left[k], right[k]), f"{part} tensor {k} differs"


def assert_served_equal_scratch(est: S3T, cfg: S3TConfig, data, deleted: set[str],
                                full_depth: bool = False, val_data: Dataset | None = None) -> None:
    """Every served route's chain is bitwise what scratch training on the retained data gives
    (``full_depth``: and every route serves all L slices)."""
    routes = served(est)
    if full_depth:
        assert all(len(prefix) == cfg.slices for prefix, _ in routes.values())
    for shard, (prefix, chain) in routes.items():
        expected = scratch_chain(cfg, data, deleted, shard, prefix, val_data)
        for got, want in zip(chain, expected, strict=True):
            assert_same_weights(got, want)


def served(est: S3T) -> dict[int, tuple]:
    records = {r.key: r for r in est.ledger.stages(None)}
    out = {}
    for shard, key in est.ledger.routes().items():
        chain = lineage_chain(key, records)
        out[shard] = (chain[-1].prefix, [est.stage_weights(r.key) for r in chain])
    return out


def pick_victims(est: S3T, data) -> list[str]:
    """One sample from two different slices of shard 0 and one from shard 1."""
    cells = partition(data.ids, data.groups, est.config.shards, est.config.slices,
                      seed=est.config.seed)
    wanted = [(0, 0), (0, 2), (1, 1)]
    return [min(i for i, c in cells.items() if c == cell) for cell in wanted]


@pytest.fixture
def fitted(tiny_bert, tmp_path):
    data = toy_dataset(72)
    cfg = config(tiny_bert)
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    return est, data, cfg


@pytest.mark.parametrize("recipe", RECIPES)
def test_served_weights_equal_scratch_training_after_forget_and_retrain(tiny_bert, tmp_path,
                                                                         recipe):
    data = toy_dataset(72)
    cfg = config(tiny_bert, **RECIPES[recipe])
    val_data = validation_set() if cfg.best_epoch else None
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, val_data, progress=False)
    victims = pick_victims(est, data)
    cert = est.forget(victims)
    assert cert["samples"] == sorted(victims)
    assert cert["erased_stages"], "forgetting must invalidate the stages that saw the samples"
    deleted = set(victims)
    assert_served_equal_scratch(est, cfg, data, deleted, val_data=val_data)

    est.retrain(progress=False)
    assert_served_equal_scratch(est, cfg, data, deleted, full_depth=True, val_data=val_data)
    assert est.audit().ok


def test_surviving_route_excludes_deleted_slices(fitted):
    est, data, cfg = fitted
    cells = partition(data.ids, data.groups, cfg.shards, cfg.slices, seed=cfg.seed)
    victims = pick_victims(est, data)
    est.forget(victims)
    hit = {cells[v] for v in victims}
    for shard, (prefix, _) in served(est).items():
        assert not any((shard, s) in hit for s in prefix)


def test_erased_files_are_gone_and_audit_passes(fitted):
    est, data, _ = fitted
    cert = est.forget(pick_victims(est, data))
    for key in cert["erased_stages"]:
        shard = int(key.split("-")[0])
        assert not est.store.path(shard, key).exists()
    assert cert["files_erased"] is True
    erased = {r.key: r for r in est.ledger.stages("erased")}
    assert set(cert["erased_stages"]) <= set(erased)
    assert all(r.files == {} and r.val_score is None for r in erased.values()), \
        "nothing computed from the erased weights may stay in the ledger"
    report = est.audit()
    assert report.ok, report.violations


def test_audit_catches_a_stage_file_left_on_disk(fitted):
    est, data, _ = fitted
    victims = pick_victims(est, data)
    stash = est.run_dir / "stash"
    shutil.copytree(est.store.root, stash)
    cert = est.forget(victims)
    key = cert["erased_stages"][0]
    shard = int(key.split("-")[0])
    shutil.copytree(stash / str(shard) / key, est.store.path(shard, key))
    report = est.audit()
    assert not report.ok
    assert any(key in v for v in report.violations)


def test_audit_catches_a_route_to_an_erased_stage(fitted):
    est, data, _ = fitted
    cert = est.forget(pick_victims(est, data))
    key = cert["erased_stages"][0]
    shard = int(key.split("-")[0])
    est.ledger.conn.execute("UPDATE routes SET stage = ? WHERE shard = ?", (key, shard))
    assert not est.audit().ok


def test_audit_catches_a_contaminated_stage_marked_live(fitted):
    est, data, _ = fitted
    cert = est.forget(pick_victims(est, data))
    key = cert["erased_stages"][0]
    est.ledger.conn.execute("UPDATE stages SET status = 'live' WHERE key = ?", (key,))
    report = est.audit()
    assert any("trained on a deleted sample" in v for v in report.violations)


def test_deleted_text_is_not_left_in_ledger_files(tiny_bert, tmp_path):
    data = toy_dataset(36)
    data.texts[5] = "zebra quokka marker"
    est = S3T(config(tiny_bert, shards=1), run_dir=tmp_path / "run").fit(data, progress=False)
    ledger_file = est.run_dir / "ledger.sqlite"
    stored = b"".join(p.read_bytes() for p in est.run_dir.glob("ledger.sqlite*"))
    assert b"zebra quokka marker" in stored
    est.forget([data.ids[5]])
    for path in est.run_dir.glob("ledger.sqlite*"):
        assert b"zebra quokka marker" not in path.read_bytes(), path
    # The deletion is durable: an independent connection sees it.
    other = sqlite3.connect(ledger_file)
    row = other.execute("SELECT deleted_version, input FROM samples WHERE sample_id = ?",
                        (data.ids[5],)).fetchone()
    assert row[0] is not None and row[1] is None


def test_training_is_deterministic(tiny_bert, tmp_path):
    data = toy_dataset(36)
    a = S3T(config(tiny_bert), run_dir=tmp_path / "a").fit(data, progress=False)
    b = S3T(config(tiny_bert), run_dir=tmp_path / "b").fit(data, progress=False)
    assert a.live_weights().keys() == b.live_weights().keys()
    for key in a.live_weights():
        assert_same_weights(a.live_weights()[key], b.live_weights()[key])
    c = S3T(config(tiny_bert, seed=8), run_dir=tmp_path / "c").fit(data, progress=False)
    key = next(iter(a.live_weights()))
    assert not torch.equal(a.live_weights()[key].head["classifier.weight"],
                           c.live_weights()[key].head["classifier.weight"])


@pytest.mark.parametrize("method", ["sisa", "full"])
def test_baselines_go_out_of_service_and_retrain_exactly(tiny_bert, tmp_path, method):
    data = toy_dataset(48)
    cfg = S3TConfig.baseline(method, **{**config(tiny_bert).to_dict(), "budget": 1})
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    assert est.status()["live_shards"] == cfg.shards
    # SISA and full fine-tuning train the whole adapter stack in every stage
    record = est.ledger.stages("live")[0]
    groups = {est.backbone.group_of_layer(est.backbone.layer_index(k))
              for k in est.stage_weights(record.key).adapter}
    assert groups == set(range(1, cfg.slices + 1))

    victim = pick_victims(est, data)[0] if cfg.shards > 1 else data.ids[0]
    cert = est.forget([victim])
    dead = [m for m, key in cert["routes_after"].items() if key is None]
    assert len(dead) == 1, "the affected shard stops serving until it is retrained"
    summary = est.retrain(progress=False)
    # retrain resumes from the last checkpoint before the affected slice
    cells = partition(data.ids, data.groups, cfg.shards, cfg.slices, seed=cfg.seed)
    shard, slice_ = cells[victim]
    ordering = est.tree.orderings[0]
    assert summary["stages_trained"] == cfg.slices - ordering.index(slice_)
    for shard, (prefix, chain) in served(est).items():
        assert len(prefix) == cfg.slices
        expected = scratch_chain(cfg, data, {victim}, shard, prefix)
        for got, want in zip(chain, expected, strict=True):
            assert_same_weights(got, want)
    assert est.audit().ok


def stage_by_stage_changes(cfg: S3TConfig, data, num_labels: int):
    """Train shard 0's stages (0,), (0, 1), ... one by one; yield (backbone, depth, names of
    the parameters each stage changed, result) for isolation checks in every family."""
    method = cfg.training_method()
    backbone = AdaptedBackbone(cfg, num_labels=num_labels)
    features = FeatureCache(backbone)
    features.ensure("all", 0, data.ids, data.texts)
    chain = []
    for depth in range(1, cfg.slices + 1):
        backbone.load_route(chain, method)
        before = {k: v.detach().clone() for k, v in backbone.model.named_parameters()}
        result = train_stage(backbone, features, shard=0, prefix=tuple(range(depth)),
                             ancestors=chain, method=method, sample_ids=data.ids,
                             labels=data.labels)
        changed = {k for k, v in backbone.model.named_parameters() if not torch.equal(v, before[k])}
        yield backbone, depth, changed, result
        chain.append(result.weights)


def stage_lora(backbone: AdaptedBackbone, depth: int) -> set[str]:
    """The LoRA tensors a stage of ``depth`` may train: those of its allocation's groups."""
    groups = backbone.config.training_method().trained_groups(depth)
    layers = {backbone.group_start(g) + i for g in groups
              for i in range(backbone.config.layers_per_slice)}
    return {k for k, _ in backbone.model.named_parameters()
            if "lora_" in k and backbone.layer_index(k) in layers}
