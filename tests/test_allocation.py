"""Layer allocation by depth (issue 28): with ``allocation`` 'growing' a stage trained on p slices
trains layer groups 1..p, continued from its ancestors; 'equal' (the paper's) trains group p
only. Bitwise equality with scratch training after forget and retrain, for both, is in
test_exactness.py (its recipes 'equal' and 'growing')."""

from __future__ import annotations

import json

import pytest
import torch
from test_exactness import served
from tiny import toy_dataset

from s3t.config import ConfigError, S3TConfig
from s3t.engine import S3T
from s3t.plan.methods import Method
from s3t.verify import verify_run

DATA = toy_dataset(36)


def config(model: str, **kw) -> S3TConfig:
    base = dict(model=model, shards=1, slices=3, budget=1, epochs=1, batch_size=8,
                learning_rate=1e-2, seed=3)
    return S3TConfig(**{**base, **kw})


def test_which_groups_a_stage_trains_and_starts_fresh():
    equal, growing, every = (Method("s3t", 3, a) for a in ("equal", "growing", "all"))
    assert [equal.trained_groups(d) for d in (1, 2, 3)] == [(1,), (2,), (3,)]
    assert [growing.trained_groups(d) for d in (1, 2, 3)] == [(1,), (1, 2), (1, 2, 3)]
    assert [growing.fresh_groups(d) for d in (1, 2, 3)] == [(1,), (2,), (3,)]
    assert [growing.active_groups(d) for d in (1, 2, 3)] == [1, 2, 3]
    assert [every.active_groups(d) for d in (1, 2, 3)] == [3, 3, 3]
    assert [every.trained_groups(d) for d in (1, 2, 3)] == [(1, 2, 3)] * 3
    assert [every.fresh_groups(d) for d in (1, 2, 3)] == [(1, 2, 3), (), ()]
    assert every.servable(1) and not Method("sisa", 3).servable(1)
    for a, method in (("equal", equal), ("growing", growing), ("all", every)):
        assert S3TConfig(allocation=a).training_method() == method
    # SISA and full train the whole stack whatever the field says
    assert S3TConfig.baseline("sisa", allocation="growing").training_method() == Method("sisa", 3)


def test_an_unknown_allocation_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="allocation must be one of equal, growing, all"):
        S3TConfig(allocation="deep").validate()
    with pytest.raises(ValueError, match="allocation must be one of"):
        Method("s3t", 3, "deep")


@pytest.mark.parametrize("allocation", ["equal", "growing", "all"])
def test_a_growing_stage_holds_and_continues_its_ancestors_groups(tiny_bert, tmp_path,
                                                                   allocation):
    est = S3T(config(tiny_bert, allocation=allocation), run_dir=tmp_path / "run").fit(
        DATA, progress=False)
    (prefix, chain), = served(est).values()
    assert len(chain) == 3
    backbone = est.backbone
    for depth, weights in enumerate(chain, 1):
        groups = {backbone.group_of_layer(backbone.layer_index(k)) for k in weights.adapter}
        assert groups == {"equal": {depth}, "growing": set(range(1, depth + 1)),
                          "all": {1, 2, 3}}[allocation]
    if allocation != "equal":
        assert any(not torch.equal(v, chain[2].adapter[k]) for k, v in chain[0].adapter.items()), \
            "the deepest stage must have trained group 1 further"
        backbone.load_route(chain, est.method)  # later stages overwrite: the deepest one wins
        state = backbone.adapter_state((1, 2, 3))
        assert all(torch.equal(state[k], chain[2].adapter[k]) for k in chain[2].adapter)
    backbone.load_route(chain[:1], est.method)  # a depth-1 route switches on what it trained
    assert backbone.depth == (3 if allocation == "all" else 1)
    assert verify_run(tmp_path / "run", progress=False).ok
    est.close()


def test_a_card_from_before_the_field_keeps_equal_allocation(tiny_bert, tmp_path):
    run = tmp_path / "run"
    S3T(config(tiny_bert, allocation="equal"), run_dir=run).fit(DATA, progress=False).close()
    card = json.loads((run / "s3t.json").read_text())
    del card["config"]["allocation"]  # written before the field: trained one group per stage
    (run / "s3t.json").write_text(json.dumps(card))
    est = S3T.load(run)
    assert est.config.allocation == "equal"
    assert est.method == Method("s3t", 3)
    est.close()
    assert verify_run(run, progress=False).ok, "verify must retrain the stages the way they were trained"


@pytest.mark.parametrize("allocation", ["equal", "growing", "all"])
def test_a_demoted_shard_serves_exactly_its_surviving_chain(tiny_bert, tmp_path, allocation):
    """After a deletion in the last slice of a shard's ordering, the model served (the merged
    layers and head the server materialised, in a process whose backbone held the erased deeper
    stage) is bitwise the surviving chain trained from scratch, loaded into a fresh backbone:
    no group left over from the erased stage or another route, the deepest stage's copies win.
    (test_exactness compares the stage files; this compares what is served.)"""
    from test_exactness import scratch_chain

    from s3t.data.partition import partition
    from s3t.models.adapted import AdaptedBackbone

    cfg = config(tiny_bert, shards=2, learning_rate=5e-2, seed=4, allocation=allocation)
    data = toy_dataset(48)
    texts = ["red cat", "blue sun moon", "green tree fish"]
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    est.predict(texts)  # materialise the full-depth routes
    ordering = est.tree.orderings[0]
    cells = partition(data.ids, data.groups, cfg.shards, cfg.slices, seed=cfg.seed)
    victim = min(i for i, c in cells.items() if c == (0, ordering[-1]))
    est.forget([victim])
    after = est.predict(texts).probabilities
    route = est.served()[0]
    assert route.depth == 2
    method = cfg.training_method()
    chain = scratch_chain(cfg, data, {victim}, 0, tuple(ordering[:2]))
    fresh = AdaptedBackbone(cfg, num_labels=len(data.label_names))
    fresh.load_route(chain, method)
    assert route.active == method.active_groups(2) == fresh.depth
    want = fresh.merged_top_layers(route.active).state_dict()
    got = route.layers.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), \
        [k for k in want if not torch.equal(got[k], want[k])][:3]
    assert all(torch.equal(route.head[k], chain[-1].head[k]) for k in chain[-1].head)
    est.close()
    again = S3T.load(tmp_path / "run")  # a process that never held the erased stage
    assert (again.predict(texts).probabilities == after).all()
    again.close()


def test_a_card_whose_allocation_disagrees_with_its_stages_is_refused(tiny_bert, tmp_path):
    """A run trained with 'equal' whose card was edited to 'all' would switch on groups its
    stages never hold: the model would serve whatever it held there before, after a deletion
    the erased deeper stage's copy. Loading such a route is refused, naming the card."""
    run = tmp_path / "run"
    S3T(config(tiny_bert, allocation="equal"), run_dir=run).fit(DATA, progress=False).close()
    card = json.loads((run / "s3t.json").read_text())
    card["config"]["allocation"] = "all"
    (run / "s3t.json").write_text(json.dumps(card))
    est = S3T.load(run)
    with pytest.raises(ValueError, match=r"holds layer groups \[1\].*allocation 'all' trains "
                                         r"\[1, 2, 3\].*s3t.json"):
        est.predict(["red cat"])
    est.close()


def test_allocation_all_with_one_ordering_trains_exactly_sisas_stages(tiny_bert, tmp_path):
    """S3T 'all', B=1 is SISA's slice checkpoints, each allowed to serve: the same stage keys
    and bits (what lets `s3t plan` stand a run's full-depth stage in for a SISA shard). The
    two differ only in serving a demoted shard at its surviving depth."""
    stages = {}
    for method in ("s3t", "sisa"):
        cfg = config(tiny_bert, shards=2, method=method, allocation="all", strategy="sisa")
        est = S3T(cfg, run_dir=tmp_path / method).fit(DATA, progress=False)
        stages[method] = est.live_weights()
        est.close()
    assert sorted(stages["s3t"]) == sorted(stages["sisa"]) and len(stages["s3t"]) == 6
    for key, mine in stages["s3t"].items():
        theirs = stages["sisa"][key]
        for part in ("adapter", "head"):
            left, right = getattr(mine, part), getattr(theirs, part)
            assert left.keys() == right.keys()
            assert all(torch.equal(left[t], right[t]) for t in left), (key, part)
