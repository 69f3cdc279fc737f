"""Weighted ensembles of shards (issue 28, item 2): ``S3TConfig.ensemble`` 'mean' (each shard
the same), 'depth' (the served stage's depth) and 'validation' (its validation score). A
weight is computed only from the served stages' records (depth, validation score), so after
deletions it equals, bit for bit, the weight that scratch training on the retained data
gives; the validation samples are never deletable. Tiny random BERT runs (m=2, L=3, B=3)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_exactness import config, validation_set
from test_serve_orderings import DATA, TEXTS, single_route_probs
from torch import nn
from typer.testing import CliRunner

from s3t.cli import app as cli
from s3t.config import ConfigError, S3TConfig
from s3t.data.partition import partition
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone
from s3t.run.deletion import ValidationSampleError
from s3t.run.numeric import new_env
from s3t.run.stages import StageRecord, served_stages
from s3t.run.weighting import shard_weights, validation_weight
from s3t.serve.ensemble import Ensemble, ServedRoute
from s3t.train.features import FeatureCache
from s3t.train.numeric import numeric_env
from s3t.train.stage_trainer import train_stage

VAL = validation_set()
# allocation 'equal': the stage scores below were read off runs trained with it (any allocation
# keeps the weights a function of the served stages' records alone).
RECIPE = {"stage_steps": "equal", "lr_schedule": "cosine", "warmup_ratio": 0.2,
          "use_rslora": True, "learning_rate": 0.1, "allocation": "equal",
          "ensemble": "mean"}  # the tests switch from the plain mean to the weightings


def record(shard: int, prefix: tuple[int, ...], score: float | None = None) -> StageRecord:
    key = f"{shard}-" + "_".join(f"{s}v0" for s in prefix)
    parent = None if len(prefix) == 1 else f"{shard}-" + "_".join(f"{s}v0" for s in prefix[:-1])
    return StageRecord(key, shard, prefix, (0,) * len(prefix), parent, "live", {}, 1, score)


# --- the weights: pure functions of depth and validation score ---------------------------------
def test_weights_per_mode_from_depth_and_validation_score():
    stages = [record(0, (0, 1), 0.5), record(0, (1, 0), 0.7), record(1, (0, 1, 2), 0.9),
              record(2, (2,), 0.2)]
    records = {r.key: r for r in stages}
    served = {0: ["0-0v0_1v0", "0-1v0_0v0"], 1: ["1-0v0_1v0_2v0"], 2: ["2-2v0"]}
    assert shard_weights(served, records, "mean", 3, 10) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert shard_weights(served, records, "depth", 3, 10) == {0: 2.0, 1: 3.0, 2: 1.0}
    got = shard_weights(served, records, "validation", 3, 10)
    # a shard serving several stages: their mean score; smoothed (acc n + 1)/(n + K), log-odds
    # over chance with K - 1 = 2 wrong labels; at or below chance: 0
    acc0, acc1 = (0.6 * 10 + 1) / 13, (0.9 * 10 + 1) / 13
    assert got == {0: math.log(2 * acc0 / (1 - acc0)), 1: math.log(2 * acc1 / (1 - acc1)),
                   2: 0.0}
    assert got[1] > got[0] > got[2] == 0.0
    assert validation_weight(1.0, 26, 256, "classification") < math.inf
    assert validation_weight(0.25, 4, 100, "classification") == 0.0  # chance, smoothed too
    assert validation_weight(-2.0, 0, 0, "causal_lm") == math.exp(-2.0)  # minus a token loss


def test_validation_weights_fall_back_to_equal_without_scores_or_above_chance():
    records = {r.key: r for r in (record(0, (0,), None), record(1, (1,), 0.9))}
    served = {0: ["0-0v0"], 1: ["1-1v0"]}
    assert shard_weights(served, records, "validation", 3, 10) == {0: 1.0, 1: 1.0}
    low = {r.key: r for r in (record(0, (0,), 0.1), record(1, (1,), 0.2))}
    assert shard_weights(served, low, "validation", 3, 10) == {0: 1.0, 1: 1.0}
    with pytest.raises(ValueError, match="unknown ensemble"):
        shard_weights(served, records, "median", 3, 10)


def test_ensemble_is_validated_and_old_cards_keep_the_mean(tmp_path):
    assert S3TConfig().ensemble == "depth"
    with pytest.raises(ConfigError) as info:
        S3TConfig(ensemble="median").validate()
    assert info.value.field == "ensemble"
    assert "ensemble must be one of mean, depth, validation" in str(info.value)


# --- serving with weights ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert) -> Path:
    """A run with validation samples, so every stage has a validation score. The high rate
    makes the tiny model's scores differ between stages (shard 1's depth-1 stage of slice 1
    scores 0.75, the full-depth stages chance)."""
    run = tmp_path_factory.mktemp("weights") / "run"
    S3T(config(tiny_bert, **RECIPE), run_dir=run).fit(DATA, VAL, progress=False).close()
    return run


def victims(est: S3T, cells: list[tuple[int, int]]) -> list[str]:
    """The first sample of each of ``cells``."""
    where = partition(DATA.ids, DATA.groups, est.config.shards, est.config.slices,
                      seed=est.config.seed)
    return [min(i for i, c in where.items() if c == cell) for cell in cells]


#: Shard 0 loses slice 0 (served at depth 2), shard 1 slices 0 and 2 (depth 1: stage (1,)).
DEMOTE = [(0, 0), (1, 0), (1, 2)]


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def shard_probs(est: S3T, shard: int, keys: list[str]) -> np.ndarray:
    return np.mean([single_route_probs(est, shard, k) for k in keys], axis=0)


@pytest.mark.parametrize("mode", ["depth", "validation"])
def test_served_probabilities_are_the_weighted_mean_of_the_shards(run_copy, mode):
    est = S3T.load(run_copy)
    est.forget(victims(est, DEMOTE))
    mean = est.predict(TEXTS)
    est.set_serving(ensemble=mode)
    assert json.loads((run_copy / "s3t.json").read_text())["config"]["ensemble"] == mode
    pred = est.predict(TEXTS)
    assert pred.routes_all == mean.routes_all
    routes = est.served()
    weights = {m: r.weight for m, r in routes.items()}
    records = {r.key: r for r in est.ledger.stages(None)}
    assert weights == shard_weights(pred.routes_all, records, mode, len(est.label_names),
                                    len(VAL))
    assert weights[0] != weights[1], "the demoted shard weighs differently"
    if mode == "depth":
        assert weights == {0: 2.0, 1: 1.0}
    else:  # shard 0's stages score chance, shard 1's 0.75: only shard 1 counts
        assert weights[0] == 0.0 and weights[1] > 0.0
    per_shard = {m: shard_probs(est, m, keys) for m, keys in pred.routes_all.items()}
    want = sum(weights[m] * p for m, p in per_shard.items()) / sum(weights.values())
    np.testing.assert_allclose(pred.probabilities, want, rtol=0, atol=1e-12)
    assert not np.allclose(pred.probabilities, mean.probabilities)
    status = est.status()
    assert status["ensemble"] == mode
    assert {int(m): r["weight"] for m, r in status["routes"].items()} == weights
    est.set_serving(ensemble="mean")  # back: bitwise what the mean served
    assert np.array_equal(est.predict(TEXTS).probabilities, mean.probabilities)
    est.close()


def test_equal_weights_serve_the_plain_mean_and_a_deletion_reweighs(run_copy):
    """Before any deletion every shard serves depth 3: 'depth' weights are all equal and the
    output is bitwise the mean's (no rounding from weighing); a deletion then demotes shards
    and their weights follow at the next call."""
    est = S3T.load(run_copy)
    mean = est.predict(TEXTS).probabilities
    est.set_serving(ensemble="depth")
    assert {r.weight for r in est.served().values()} == {3.0}
    assert np.array_equal(est.predict(TEXTS).probabilities, mean)
    est.forget(victims(est, DEMOTE))  # the routes change: the weights are recomputed
    pred = est.predict(TEXTS)
    assert {m: r.weight for m, r in est.served().items()} == {0: 2.0, 1: 1.0}
    want = (2 * shard_probs(est, 0, pred.routes_all[0])
            + shard_probs(est, 1, pred.routes_all[1])) / 3
    np.testing.assert_allclose(pred.probabilities, want, rtol=0, atol=1e-12)
    est.close()


# --- exactness: a weight never depends on a deleted sample -------------------------------------
def scratch_scores(cfg: S3TConfig, deleted: set[str], wanted: dict[int, list[tuple[int, ...]]]
                   ) -> dict[tuple[int, tuple[int, ...]], float | None]:
    """The validation score of each wanted (shard, prefix) trained from scratch on the
    retained data (same seeds, the run's numeric environment)."""
    with numeric_env(new_env(cfg.torch_threads)):
        cells = partition(DATA.ids, DATA.groups, cfg.shards, cfg.slices, seed=cfg.seed)
        backbone = AdaptedBackbone(cfg, num_labels=len(DATA.label_names))
        features = FeatureCache(backbone, chunk_size=cfg.batch_size)
        label = dict(zip(DATA.ids, DATA.labels, strict=True))
        text = dict(zip(DATA.ids, DATA.texts, strict=True))
        rows = sorted(zip(VAL.ids, VAL.labels, VAL.texts, strict=True))
        val_ids = [f"eval:{r[0]}" for r in rows]
        features.ensure("eval", 0, val_ids, [r[2] for r in rows])
        val = val_ids, [r[1] for r in rows]
        out: dict[tuple[int, tuple[int, ...]], float | None] = {}
        for shard, prefixes in wanted.items():
            for prefix in prefixes:
                chain: list = []
                for depth in range(1, len(prefix) + 1):
                    ids = []
                    for s in prefix[:depth]:
                        cell = sorted(i for i, c in cells.items()
                                      if c == (shard, s) and i not in deleted)
                        features.ensure((shard, s), 0, cell, [text[i] for i in cell])
                        ids += cell
                    result = train_stage(backbone, features, shard=shard, prefix=prefix[:depth],
                                         ancestors=chain, method=cfg.training_method(),
                                         sample_ids=ids, labels=[label[i] for i in ids], val=val)
                    chain.append(result.weights)
                out[(shard, prefix)] = result.val_score
    return out


def test_weights_after_deletions_equal_scratch_training_on_the_retained_data(run_copy):
    est = S3T.load(run_copy)
    deleted = victims(est, DEMOTE)
    est.forget(deleted)
    records = {r.key: r for r in est.ledger.stages(None)}
    served = served_stages(est.ledger.routes(), records, est.config.serve_orderings)
    scratch = scratch_scores(est.config, set(deleted),
                             {m: [records[k].prefix for k in keys] for m, keys in served.items()})
    prefixes = {m: [records[k].prefix for k in keys] for m, keys in served.items()}
    assert all(scratch[(m, p)] == records[k].val_score
               for m, keys in served.items() for k, p in zip(keys, prefixes[m], strict=True))
    # the weights the served prefixes get from scratch training, by the definition
    n_labels = len(est.label_names)
    want = {"depth": {m: float(len(p[0])) for m, p in prefixes.items()},
            "validation": {m: validation_weight(math.fsum(scratch[(m, q)] for q in p) / len(p),
                                                n_labels, len(VAL), "classification")
                           for m, p in prefixes.items()}}
    for mode in ("depth", "validation"):
        est.set_serving(ensemble=mode)
        est.predict(TEXTS[:2])
        served_weights = {m: r.weight for m, r in est.served().items()}
        assert served_weights == want[mode]  # float ==: bitwise
        assert len(set(served_weights.values())) > 1, "the deletions changed a weight"
    # the validation split cannot be deleted: refused, nothing changed
    with pytest.raises(ValidationSampleError, match="weighs the shards"):
        est.forget(["v00"])
    assert {m: r.weight for m, r in est.served().items()} == served_weights
    est.close()


# --- choosing it ------------------------------------------------------------------------------
def test_validation_ensemble_needs_validation_samples(tiny_bert, tmp_path, trained):
    with pytest.raises(ConfigError) as info:
        S3T(config(tiny_bert, epochs=1, ensemble="validation"),
            run_dir=tmp_path / "r").fit(DATA, progress=False)
    assert info.value.field == "ensemble" and "no validation samples" in str(info.value)
    bare = tmp_path / "bare"
    S3T(config(tiny_bert, epochs=1), run_dir=bare).fit(DATA, progress=False).close()
    card = (bare / "s3t.json").read_bytes()
    refused = CliRunner().invoke(cli, ["configure", str(bare), "--ensemble", "validation"])
    assert refused.exit_code == 2 and "--ensemble: ensemble 'validation'" in refused.stderr
    assert (bare / "s3t.json").read_bytes() == card, "a refused change changes nothing"


def test_configure_switches_the_ensemble_and_an_open_run_follows(run_copy):
    card = json.loads((run_copy / "s3t.json").read_text())
    del card["config"]["ensemble"]  # a run from before the field: it served the mean
    (run_copy / "s3t.json").write_text(json.dumps(card))
    est = S3T.load(run_copy)
    assert est.config.ensemble == "mean"
    est.forget(victims(est, DEMOTE))
    before = est.predict(TEXTS)
    result = CliRunner().invoke(cli, ["configure", str(run_copy), "--ensemble", "depth", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "run_dir": str(run_copy), "ensemble": "depth", "changed": True,
        "previous": {"serve_orderings": "all", "ensemble": "mean"}}
    after = est.predict(TEXTS)  # the open run follows the card at its next call
    assert {m: r.weight for m, r in est.served().items()} == {0: 2.0, 1: 1.0}
    assert not np.allclose(after.probabilities, before.probabilities)
    assert est.status()["ensemble"] == "depth"
    est.close()
    same = CliRunner().invoke(cli, ["configure", str(run_copy), "--ensemble", "depth"])
    assert same.exit_code == 0 and "ensemble is already depth; nothing changed" in same.stdout
    bad = CliRunner().invoke(cli, ["configure", str(run_copy), "--ensemble", "median"])
    assert bad.exit_code == 2 and "--ensemble: ensemble must be one of" in bad.stderr
    none = CliRunner().invoke(cli, ["configure", str(run_copy)])
    assert none.exit_code == 2 and "--serve-orderings and/or --ensemble" in none.output


# --- causal LMs: next-token and evaluation mixtures ---------------------------------------------
def fake_route(key: str, weight: float) -> ServedRoute:
    return ServedRoute(key, 1, nn.ModuleList(), {}, (), weight=weight)


def test_language_model_mixtures_use_the_weights():
    probs = {0: torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64),
             1: torch.tensor([[0.1, 0.1, 0.8]], dtype=torch.float64)}
    logs = {m: torch.log(p[0]) for m, p in probs.items()}  # per token, as token_log_probs
    weighted = {0: fake_route("a", 1.0), 1: fake_route("b", 3.0)}
    mixed = Ensemble.mixture_log_probs(logs, weighted)
    torch.testing.assert_close(mixed.exp(), 0.25 * probs[0][0] + 0.75 * probs[1][0], rtol=0,
                               atol=1e-12)
    ensemble = object.__new__(Ensemble)  # no backbone: each shard's probabilities given
    ensemble.route_next_token_probs = lambda batch, routes: probs  # type: ignore[method-assign]
    torch.testing.assert_close(ensemble.next_token_probs({}, weighted),
                               0.25 * probs[0] + 0.75 * probs[1], rtol=0, atol=1e-12)
    equal = {0: fake_route("a", 2.0), 1: fake_route("b", 2.0)}
    assert torch.equal(Ensemble.mixture_log_probs(logs, equal),
                       torch.logsumexp(torch.stack([logs[0], logs[1]]), 0) - math.log(2))
