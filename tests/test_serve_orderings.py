"""serve_orderings 'all' (issue 14): each shard serves the mean of every live stage at its
deepest surviving depth (one per surviving ordering), shards aggregated as before; 'best'
(one route per shard) is unchanged. 'all' is the default. Tiny random BERT runs (m=2, L=3,
B=3 cyclic)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_exactness import config, pick_victims, scratch_chain
from tiny import toy_dataset
from typer.testing import CliRunner

from s3t.cli import app as cli
from s3t.config import ConfigError, S3TConfig
from s3t.engine import S3T
from s3t.run import lineage_chain
from s3t.run.stages import StageRecord, served_stages
from s3t.serve.ensemble import Ensemble

DATA = toy_dataset(72)
TEXTS = toy_dataset(10, seed=5).texts  # every text 4 one-token words: one batch, no padding


def set_serve_orderings(run: Path, value: str | None) -> None:
    """Change a run card's serve_orderings (None: drop the field, as a run from before it)."""
    card = json.loads((run / "s3t.json").read_text())
    if value is None:
        card["config"].pop("serve_orderings", None)
    else:
        card["config"]["serve_orderings"] = value
    (run / "s3t.json").write_text(json.dumps(card, indent=2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert) -> Path:
    run = tmp_path_factory.mktemp("orderings") / "run"
    S3T(config(tiny_bert, epochs=1), run_dir=run).fit(DATA, progress=False).close()
    return run


def test_all_is_the_default_written_to_new_run_cards(run_all):
    """The default (issue 14: more accurate for B > 1); a card from before the field keeps
    'best', the value it was served with (test_best_is_unchanged)."""
    assert S3TConfig().serve_orderings == "all"
    assert json.loads((run_all / "s3t.json").read_text())["config"]["serve_orderings"] == "all"


@pytest.fixture
def run_all(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def chain_of(est: S3T, key: str) -> list:
    records = {r.key: r for r in est.ledger.stages(None)}
    return [est.stage_weights(r.key) for r in lineage_chain(key, records)]


def single_route_probs(est: S3T, shard: int, key: str) -> np.ndarray:
    """The probabilities of stage ``key`` served alone (an ensemble of one route)."""
    ensemble = Ensemble(est.backbone, est.method)
    ensemble.update({shard: (key, chain_of(est, key))})
    return ensemble.predict_proba(TEXTS, vote=False, n_labels=len(est.label_names))


def assert_live_and_deepest(est: S3T, routes_all: dict[int, list[str]]) -> None:
    records = {r.key: r for r in est.ledger.stages(None)}
    for shard, keys in routes_all.items():
        assert keys[0] == est.ledger.routes()[shard], "the route serves first"
        assert len(set(keys)) == len(keys)
        depth = records[keys[0]].depth
        for key in keys:
            assert all(r.status == "live" for r in lineage_chain(key, records)), key
            assert records[key].shard == shard and records[key].depth == depth
        deepest = [r.key for r in records.values() if r.shard == shard and r.depth == depth
                   and all(x.status == "live" for x in lineage_chain(r.key, records))]
        assert sorted(deepest) == sorted(keys), "every surviving stage at that depth serves"


def test_all_serves_the_mean_of_every_ordering_before_any_deletion(run_all):
    est = S3T.load(run_all)
    pred = est.predict(TEXTS)
    assert set(pred.routes_all) == {0, 1}
    assert all(len(keys) == 3 for keys in pred.routes_all.values())
    assert pred.routes == {m: keys[0] for m, keys in pred.routes_all.items()}
    assert_live_and_deepest(est, pred.routes_all)
    assert all(r.depth == 3 and len(r.members) == 3 for r in est.served().values())
    per_shard = [np.mean([single_route_probs(est, m, k) for k in keys], axis=0)
                 for m, keys in sorted(pred.routes_all.items())]
    np.testing.assert_allclose(pred.probabilities, np.mean(per_shard, axis=0), rtol=0, atol=1e-12)
    best = np.mean([single_route_probs(est, m, keys[0])
                    for m, keys in sorted(pred.routes_all.items())], axis=0)
    assert not np.allclose(pred.probabilities, best), "the other orderings change the output"
    status = est.status()
    assert status["serve_orderings"] == "all"
    assert [len(r["served_stages"]) for r in status["routes"].values()] == [3, 3]
    est.close()
    shown = CliRunner().invoke(cli, ["status", str(run_all)])
    assert shown.exit_code == 0 and shown.stdout.count("serving 3 stages") == 2, shown.output


def test_after_a_deletion_only_surviving_deepest_stages_serve(run_all):
    est = S3T.load(run_all)
    est.predict(TEXTS)
    cert = est.forget([pick_victims(est, DATA)[0]])  # a sample of slice 0 of shard 0
    erased = set(cert["erased_stages"])
    pred = est.predict(TEXTS)
    served = {k for keys in pred.routes_all.values() for k in keys}
    assert served and not served & erased
    assert_live_and_deepest(est, pred.routes_all)
    # cyclic orderings (0,1,2), (1,2,0), (2,0,1): only (1,2) survives at depth 2 in shard 0
    records = {r.key: r for r in est.ledger.stages(None)}
    assert [records[k].prefix for k in pred.routes_all[0]] == [(1, 2)]
    assert len(pred.routes_all[1]) == 3
    # the default ensemble ('depth'): shard 0 serves depth 2, shard 1 depth 3
    want = (2 * single_route_probs(est, 0, pred.routes_all[0][0])
            + 3 * np.mean([single_route_probs(est, 1, k) for k in pred.routes_all[1]],
                          axis=0)) / 5
    np.testing.assert_allclose(pred.probabilities, want, rtol=0, atol=1e-12)
    est.close()


def test_best_is_unchanged(run_all):
    """'best' (and a run card from before the field) serves one route per shard, with bitwise
    the probabilities of the formula served before: the mean over shards of each route's."""
    set_serve_orderings(run_all, None)
    est = S3T.load(run_all)
    assert est.config.serve_orderings == "best"
    pred = est.predict(TEXTS)
    routes = est.served()
    assert pred.routes_all == {m: [r.stage] for m, r in routes.items()}
    assert all(r.members == (r,) for r in routes.values())
    ensemble = Ensemble(est.backbone, est.method)  # a view of the same pretrained trunk
    batch = ensemble.encode(TEXTS)
    mask = batch["attention_mask"]
    with torch.no_grad():
        bounds = ensemble.boundaries(batch, top_group=min(r.active for r in routes.values()))
        want = np.zeros((len(TEXTS), len(est.label_names)))
        for route in routes.values():
            hidden = est.backbone.family.apply_layers_for_head(route.layers, bounds[route.active], mask)
            model = route.head_model if route.head_model is not None else est.backbone.model
            logits = est.backbone.family.head(model, hidden, mask)
            want += torch.softmax(logits, -1).double().numpy()
    assert np.array_equal(pred.probabilities, want / len(routes))
    assert "served_stages" not in est.status()["routes"]["0"]
    est.close()
    set_serve_orderings(run_all, "best")
    again = S3T.load(run_all)
    assert np.array_equal(again.predict(TEXTS).probabilities, pred.probabilities)
    again.close()


def test_forget_and_retrain_serves_what_scratch_training_gives(run_all, tiny_bert):
    est = S3T.load(run_all)
    victims = pick_victims(est, DATA)
    est.forget(victims)
    est.retrain(progress=False)
    pred = est.predict(TEXTS)
    assert all(len(keys) == 3 for keys in pred.routes_all.values())
    records = {r.key: r for r in est.ledger.stages(None)}
    cfg = est.config
    reference = Ensemble(est.backbone, est.method)
    chains = {m: {k: scratch_chain(cfg, DATA, set(victims), m, records[k].prefix) for k in keys}
              for m, keys in pred.routes_all.items()}
    reference.update({m: (keys[0], chains[m][keys[0]]) for m, keys in pred.routes_all.items()},
                     {m: [(k, chains[m][k]) for k in keys[1:]]
                      for m, keys in pred.routes_all.items()})
    want = reference.predict_proba(TEXTS, vote=False, n_labels=len(est.label_names))
    assert np.array_equal(pred.probabilities, want)
    assert est.audit().ok
    est.close()


def test_vote_takes_each_shards_mean_then_votes(run_all):
    card = json.loads((run_all / "s3t.json").read_text())
    card["config"]["aggregation"] = "vote"
    (run_all / "s3t.json").write_text(json.dumps(card))
    est = S3T.load(run_all)
    pred = est.predict(TEXTS)
    votes = [np.mean([single_route_probs(est, m, k) for k in keys], axis=0).argmax(1)
             for m, keys in sorted(pred.routes_all.items())]
    want = np.mean([np.eye(len(est.label_names))[v] for v in votes], axis=0)
    assert np.array_equal(pred.probabilities, want)
    est.close()


def record(shard: int, prefix: tuple[int, ...], status: str = "live",
           score: float | None = None) -> StageRecord:
    key = f"{shard}-" + "_".join(f"{s}v0" for s in prefix)
    parent = None if len(prefix) == 1 else f"{shard}-" + "_".join(f"{s}v0" for s in prefix[:-1])
    return StageRecord(key, shard, prefix, (0,) * len(prefix), parent, status, {}, 1, score)


def test_served_stages_takes_live_chains_at_the_routes_depth_in_routing_order():
    stages = [record(0, (0,)), record(0, (0, 1), score=0.5), record(0, (1,)),
              record(0, (1, 0), score=0.9), record(0, (2,), status="erased"),
              record(0, (2, 0)),  # live, but built on an erased stage: never served
              record(0, (0, 1, 2), status="erased"), record(1, (0,)), record(1, (1,))]
    records = {r.key: r for r in stages}
    routes = {0: "0-1v0_0v0", 1: "1-0v0", 2: None}
    assert served_stages(routes, records) == {0: ["0-1v0_0v0"], 1: ["1-0v0"]}
    assert served_stages(routes, records, "all") == {0: ["0-1v0_0v0", "0-0v0_1v0"],
                                                     1: ["1-0v0", "1-1v0"]}


def test_serve_orderings_is_validated(tmp_path):
    with pytest.raises(ConfigError) as info:
        S3TConfig(serve_orderings="every").validate()
    assert info.value.field == "serve_orderings"
    assert str(info.value) == ("serve_orderings must be one of best, all ('best': one route per "
                               "shard; 'all': the mean of every live ordering's stage at the "
                               "shard's deepest depth), got 'every'")
    result = CliRunner().invoke(cli, ["train", "--data", "wordnet", "--out", str(tmp_path / "r"),
                                      "--serve-orderings", "every"])
    assert result.exit_code == 2
    assert "--serve-orderings: serve_orderings must be one of best, all" in result.stderr



def test_verify_checks_every_served_stage_under_all():
    from s3t.verify import select

    stages = [record(0, (0,)), record(0, (0, 1)), record(0, (1,)), record(0, (1, 0)),
              record(1, (0,)), record(1, (0, 1)), record(1, (1,)), record(1, (1, 0), "erased")]
    records = {r.key: r for r in stages}
    routes: dict[int, str | None] = {0: "0-0v0_1v0", 1: "1-0v0_1v0"}
    best = [r.key for r in select(records, routes, "served")]
    assert best == ["0-0v0", "0-0v0_1v0", "1-0v0", "1-0v0_1v0"]
    every = [r.key for r in select(records, routes, "served", "all")]
    assert every == ["0-0v0", "0-1v0", "0-0v0_1v0", "0-1v0_0v0", "1-0v0", "1-0v0_1v0"]


def stage_digest(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "stages").rglob("*"))
            if p.is_file()}


def test_configure_switches_serving_without_retraining(run_all):
    """`s3t configure --serve-orderings` rewrites the card's serving choice only: the stages
    stay byte for byte, and a reopened run serves the other way."""
    est = S3T.load(run_all)
    all_pred = est.predict(TEXTS)
    est.close()
    stages = stage_digest(run_all)
    result = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings", "best",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"run_dir": str(run_all), "serve_orderings": "best",
                                         "previous": "all", "changed": True}
    assert json.loads((run_all / "s3t.json").read_text())["config"]["serve_orderings"] == "best"
    assert not list(run_all.glob("s3t.json.*")), "no temporary card left behind"
    est = S3T.load(run_all)
    best_pred = est.predict(TEXTS)
    assert best_pred.routes_all == {m: [r.stage] for m, r in est.served().items()}
    # the API switches an open estimator at once, back to what the card said before
    est.set_serve_orderings("all")
    assert est.config.serve_orderings == "all"
    again = est.predict(TEXTS)
    assert again.routes_all == all_pred.routes_all
    assert np.array_equal(again.probabilities, all_pred.probabilities)
    est.close()
    assert stage_digest(run_all) == stages
    same = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings", "all"])
    assert same.exit_code == 0 and "already all; nothing changed" in same.stdout


def test_configure_refuses_bad_values_and_a_running_writer(run_all):
    card = (run_all / "s3t.json").read_bytes()
    bad = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings", "every"])
    assert bad.exit_code == 2
    assert "--serve-orderings: serve_orderings must be one of best, all" in bad.stderr
    from s3t.run import Run

    holder = Run.open(run_all)
    try:
        with holder.writer_lock():  # a retrain in progress
            busy = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings",
                                            "best"])
    finally:
        holder.close()
    assert busy.exit_code == 1 and "another retrain (or training) is running" in busy.stderr
    assert (run_all / "s3t.json").read_bytes() == card, "a refused change changes nothing"


def test_configure_refuses_a_symlinked_run_card(run_all, tmp_path):
    """A run card that is a symbolic link is never written through: refused, nothing changes."""
    real = tmp_path / "elsewhere.json"
    shutil.move(run_all / "s3t.json", real)
    (run_all / "s3t.json").symlink_to(real)
    before = real.read_bytes()
    result = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings", "best"])
    assert result.exit_code == 1, result.output
    assert "is a symbolic link" in result.stderr
    assert real.read_bytes() == before and (run_all / "s3t.json").is_symlink()
    assert not list(run_all.glob("s3t.json.*")), "no temporary card left behind"


def test_an_open_run_follows_configure_from_another_process(run_all):
    """A run already open (a server) serves what `s3t configure` chose from its next call on,
    and reports it; a card that no longer reads changes nothing until the run is reopened
    (where it is refused)."""
    est = S3T.load(run_all)
    try:
        before = est.predict(TEXTS)
        assert any(len(keys) > 1 for keys in before.routes_all.values()), "B=3: 'all' serves more"
        result = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings", "best"])
        assert result.exit_code == 0, result.output
        after = est.predict(TEXTS)
        assert after.routes_all == {m: [k] for m, k in after.routes.items()}
        assert est.status()["serve_orderings"] == "best"
        fresh = S3T.load(run_all)
        assert np.array_equal(fresh.predict(TEXTS).probabilities, after.probabilities)
        fresh.close()
        (run_all / "s3t.json").write_text("{")
        still = est.predict(TEXTS)
        assert still.routes_all == after.routes_all and est.status()["serve_orderings"] == "best"
    finally:
        est.close()


def test_a_running_service_follows_configure(run_all):
    from fastapi.testclient import TestClient

    from s3t.service import create_app

    with TestClient(create_app(run_all, token=None)) as client:
        served = client.post("/v1/predict", json={"inputs": TEXTS}).json()
        assert client.get("/v1/status").json()["serve_orderings"] == "all"
        assert any(len(keys) > 1 for keys in served["routes_all"].values())
        result = CliRunner().invoke(cli, ["configure", str(run_all), "--serve-orderings", "best"])
        assert result.exit_code == 0, result.output
        served = client.post("/v1/predict", json={"inputs": TEXTS}).json()
        assert served["routes_all"] == {m: [k] for m, k in served["routes"].items()}
        status = client.get("/v1/status").json()
        assert status["serve_orderings"] == "best"
        assert all("served_stages" not in r for r in status["routes"].values())


def test_an_open_run_never_follows_a_card_that_is_not_a_regular_file(run_all, tmp_path):
    """A card swapped for a link or a pipe while the run is open is not read (a pipe would
    block every model call): serving goes on as it was."""
    import os

    est = S3T.load(run_all)
    try:
        before = est.predict(TEXTS)
        real = tmp_path / "elsewhere.json"
        card = json.loads((run_all / "s3t.json").read_text())
        card["config"]["serve_orderings"] = "best"
        real.write_text(json.dumps(card))
        (run_all / "s3t.json").unlink()
        (run_all / "s3t.json").symlink_to(real)
        assert est.predict(TEXTS).routes_all == before.routes_all
        (run_all / "s3t.json").unlink()
        os.mkfifo(run_all / "s3t.json")
        assert est.predict(TEXTS).routes_all == before.routes_all
        assert est.status()["serve_orderings"] == "all"
    finally:
        est.close()
