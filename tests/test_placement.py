"""Placement by deletion likelihood: the rule (pure), its simulator, the data columns, the
config field, and a trained run (recorded placement, refused deletions, exactness)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from s3t.config import ConfigError, S3TConfig
from s3t.data.loaders import load_table
from s3t.data.partition import partition
from s3t.data.samples import Dataset
from s3t.plan.orderings import make_orderings
from s3t.plan.placement import parse_skew, place_samples, place_units, slice_prior, zipf_weights
from s3t.plan.placement_sim import simulate_placement
from s3t.plan.prefix_tree import PrefixTree


def test_prior_placement_puts_the_likeliest_units_in_the_last_slice_of_every_shard() -> None:
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(1, 4, size=300)]
    priors = rng.exponential(size=300)
    cells = place_units(sizes, priors, 3, 4, seed=5, rule="prior")
    by_slice = [[priors[u] for u, c in enumerate(cells) if c[1] == j] for j in range(4)]
    # bands: every unit of slice j is at most as likely as every unit of slice j+1
    for lower, upper in zip(by_slice, by_slice[1:], strict=False):
        assert max(lower) <= min(upper)
    load = Counter()
    for u, cell in enumerate(cells):
        load[cell] += sizes[u]
    assert len(load) == 12 and max(load.values()) - min(load.values()) <= 2 * max(sizes)
    for j in range(4):  # every shard gets about the same share of each band
        shares = [sum(priors[u] for u, c in enumerate(cells) if c == (s, j)) for s in range(3)]
        assert max(shares) < 1.5 * min(shares) + 1e-9


def test_uniform_rule_is_the_partitioners_placement() -> None:
    ids = [f"s{i:03d}" for i in range(90)]
    groups = [f"g{i // 3}" if i % 2 else None for i in range(90)]
    expected = partition(ids, groups, 2, 3, seed=4)
    units: dict[tuple[int, str], list[str]] = {}
    for sid, g in zip(ids, groups, strict=True):
        units.setdefault((0, g) if g is not None else (1, sid), []).append(sid)
    keys = sorted(units)
    cells = place_units([len(units[k]) for k in keys], None, 2, 3, seed=4, rule="uniform")
    assert {sid: cells[u] for u, k in enumerate(keys) for sid in units[k]} == expected


def test_place_samples_keeps_groups_whole_and_anchors_undeletable_data_first() -> None:
    ids = [f"s{i:03d}" for i in range(120)]
    groups = [f"user{i // 4}" for i in range(120)]
    priors = [float((i // 4) % 10) for i in range(120)]  # a group's rate on each of its rows
    deletable = [i >= 24 for i in range(120)]            # users 0..5 are never deleted
    cells, prior = place_samples(ids, groups, priors, deletable, 2, 3, seed=0)
    for g in set(groups):
        assert len({cells[i] for i, gg in zip(ids, groups, strict=True) if gg == g}) == 1
    assert all(cells[ids[i]][1] == 0 for i in range(24))
    assert len(prior) == 3 and abs(sum(prior) - 1) < 1e-9
    assert prior[0] < prior[1] < prior[2]
    assert prior[2] > 0.5


def test_place_samples_needs_a_column() -> None:
    with pytest.raises(ValueError, match="deletion_prior column or deletable flags"):
        place_samples(["a", "b"], [None, None], None, None, 1, 2)


def test_slice_prior_and_zipf_and_skew_parsing() -> None:
    assert slice_prior([(0, 0), (0, 1), (1, 1)], [1.0, 2.0, 1.0], 2) == [0.25, 0.75]
    assert slice_prior([(0, 0), (0, 1)], [0.0, 0.0], 2) == [0.5, 0.5]
    w = zipf_weights(100, 1.1, np.random.default_rng(0))
    assert abs(w.sum() - 1) < 1e-12 and w.max() / w.min() == pytest.approx(100**1.1)
    assert parse_skew("uniform") == 0.0 and parse_skew("zipf:1.1") == 1.1
    for bad in ("zipf", "zipf:0", "zipf:-1", "pareto:2", "zipf:abc"):
        with pytest.raises(ValueError, match="skew must be"):
            parse_skew(bad)


def test_bms_on_the_slice_prior_keeps_the_hot_slice_out_of_first_place() -> None:
    """B < L: the hot slice heads no ordering, so it is in the fewest stages (BMS orderings
    are a Latin square's rows, so with B = L it heads one, as every slice does)."""
    for prior in ([0.05, 0.1, 0.85], [0.037, 0.067, 0.896]):
        orders = make_orderings("bms", 3, 2, prior=prior)
        assert all(o[0] != 2 for o in orders)
        stages = PrefixTree(orders).stages
        holding = [sum(1 for st in stages if s in st.slices) for s in range(3)]
        assert holding[2] == min(holding) < max(holding)


def test_placement_by_prior_cuts_stages_invalidated_per_deletion_under_zipf() -> None:
    """The issue's target: >= 30% fewer stages invalidated per deletion under a Zipf(1.1)
    stream of users, priors estimated from a past stream of the same distribution (README
    plan m=2, L=3, B=3, retrained when no shard serves)."""
    res = simulate_placement(2, 3, 3, users=600, deletions=60, history=600, trials=20, seed=3)
    u = res["uniform"]["stages_invalidated_per_deletion"]
    p = res["prior"]["stages_invalidated_per_deletion"]
    assert p <= 0.7 * u, res
    assert res["stages_cut"] == pytest.approx(1 - p / u)
    # with B < L the hot slice sits last in every ordering: a cut even when every deletion
    # is retrained at once
    res = simulate_placement(2, 3, 2, users=600, deletions=60, window=1, trials=10, seed=3)
    assert res["stages_cut"] > 0.1, res
    # a uniform stream gives placement nothing to work with
    res = simulate_placement(2, 3, 2, users=600, deletions=60, skew=0.0, trials=10, seed=3)
    assert abs(res["stages_cut"]) < 0.1, res


def test_simulate_placement_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="deletions .* cannot exceed users"):
        simulate_placement(2, 3, 3, users=10, deletions=11)
    with pytest.raises(ValueError, match="window must be >= 1"):
        simulate_placement(2, 3, 3, window=0)
    with pytest.raises(ValueError, match="budget must be an integer >= 1"):
        simulate_placement(2, 3, 0)


def test_stage_counts_of_the_simulated_orderings() -> None:
    """The simulator counts stages from the prefix tree: a first hit on a slice heading one
    of B=L cyclic orderings invalidates L + (L-1) + ... + 1 stages."""
    tree = PrefixTree(make_orderings("cyclic", 3, 3))
    assert sum(1 for st in tree.stages if 0 in st.slices) == 6
    res = simulate_placement(1, 3, 3, users=30, deletions=1, window=1, trials=3)
    assert res["uniform"]["stages_invalidated_per_deletion"] == 6


# --------------------------------------------------------------------------- data and config


def test_loader_reads_deletion_prior_and_deletable(tmp_path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("id,text,label,group,deletion_prior,deletable\n"
                 "a,x y,p,u1,0.5,\nb,x z,q,u1,,false\nc,y z,p,,2,TRUE\nd,z z,q,,,no\n")
    data = load_table(f)
    assert data.priors == [0.5, None, 2.0, None]
    assert data.deletable == [True, False, True, False]
    assert data.subset([2, 1]).deletable == [True, False]
    j = tmp_path / "d.jsonl"
    j.write_text(json.dumps({"id": "a", "text": "t", "label": "x", "deletion_prior": 1}) + "\n"
                 + json.dumps({"id": "b", "text": "t", "label": "y", "deletable": False}) + "\n")
    assert load_table(j).priors == [1.0, None] and load_table(j).deletable == [True, False]
    plain = tmp_path / "p.csv"
    plain.write_text("id,text,label\na,x,p\nb,y,q\n")
    assert load_table(plain).priors is None and load_table(plain).deletable is None


@pytest.mark.parametrize("row, message", [
    ("a,x,p,-1,", "deletion_prior must be a number >= 0"),
    ("a,x,p,often,", "deletion_prior must be a number >= 0"),
    ("a,x,p,nan,", "deletion_prior must be a number >= 0"),
    ("a,x,p,,maybe", "deletable must be true or false"),
])
def test_loader_rejects_bad_placement_values(tmp_path, row, message) -> None:
    f = tmp_path / "d.csv"
    f.write_text("id,text,label,deletion_prior,deletable\n" + row + "\n")
    with pytest.raises(ValueError, match=f"line 2: {message}"):
        load_table(f)


def test_config_placement_field() -> None:
    assert S3TConfig().placement == "uniform"
    S3TConfig(placement="prior", strategy="bms").validate()
    with pytest.raises(ConfigError, match="placement must be one of uniform, prior") as err:
        S3TConfig(placement="zipf").validate()
    assert err.value.field == "placement"
    with pytest.raises(ConfigError, match="leave prior unset") as err:
        S3TConfig(placement="prior", prior=[0.2, 0.3, 0.5]).validate()
    assert err.value.field == "prior"


# --------------------------------------------------------------------------- a trained run


def _data() -> Dataset:
    from tiny import toy_dataset

    data = toy_dataset(72, groups=True)  # users user0..user17, 4 samples each
    user = [int(g[4:]) for g in data.groups]
    data.priors = [float(u % 6) for u in user]           # users 5, 11, 17 the likeliest
    data.deletable = [u not in (0, 6) for u in user]     # users 0 and 6: never deleted
    return data


def test_trained_run_records_placement_refuses_undeletable_and_stays_exact(tiny_bert,
                                                                           tmp_path) -> None:
    import test_exactness as ex

    from s3t.engine import S3T
    from s3t.run import ForgetRequestError

    data = _data()
    cfg = ex.config(tiny_bert, placement="prior", strategy="bms", budget=2, epochs=1)
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    cells, prior = place_samples(data.ids, data.groups, data.priors, data.deletable,
                                 cfg.shards, cfg.slices, seed=cfg.seed)
    recorded = {sid: (sh, sl) for sid, sh, sl, *_ in est.ledger.conn.execute(
        "SELECT sample_id, shard, slice FROM samples")}
    assert recorded == cells
    card = json.loads((tmp_path / "run" / "s3t.json").read_text())
    assert card["placement"] == {"rule": "prior", "slice_prior": prior}
    assert card["orderings"] == [list(o) for o in make_orderings("bms", 3, 2, prior=prior)]
    assert all(o[0] != 2 for o in card["orderings"])  # the hot slice heads no ordering
    protected = [i for i, d in zip(data.ids, data.deletable, strict=True) if not d]
    assert {cells[i][1] for i in protected} == {0}

    before = (est.ledger.counts(), est.ledger.deletion_count(), sorted(est.ledger.routes().items()))
    for request in ({"sample_ids": [protected[0], "s0071"]}, {"groups": ["user6"]}):
        with pytest.raises(ForgetRequestError, match="deletable=false cannot be forgotten"):
            est.forget(**request)
    assert (est.ledger.counts(), est.ledger.deletion_count(),
            sorted(est.ledger.routes().items())) == before

    hot = [i for i, g in zip(data.ids, data.groups, strict=True) if g == "user5"]
    assert {cells[i][1] for i in hot} == {2}
    cert = est.forget(hot)
    holding = [st for st in PrefixTree(card["orderings"]).stages if 2 in st.slices]
    assert len(cert["erased_stages"]) == len(holding)
    shard = cells[hot[0]][0]
    depth = max(o.index(2) for o in card["orderings"])
    assert ex.served(est)[shard][0] in {tuple(o[:depth]) for o in card["orderings"]}
    original = ex.partition
    ex.partition = lambda ids, groups, m, n, seed: place_samples(
        ids, groups, data.priors, data.deletable, m, n, seed=seed)[0]
    try:
        est.retrain(progress=False)
        ex.assert_served_equal_scratch(est, cfg, data, set(hot), full_depth=True)
    finally:
        ex.partition = original
    assert est.audit().ok
    est.close()


def test_forget_refuses_undeletable_samples_and_changes_nothing(tmp_path) -> None:
    """At the ledger: by id or through a group, a deletable=false sample is refused."""
    from s3t.run.deletion import DeletionRequest
    from s3t.run.forget import UndeletableSampleError, plan_forget
    from s3t.run.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.initialise(1)
    ledger.add_samples([("a", 0, 0, "u1", 0, "x"), ("b", 0, 0, "u1", 1, "y"),
                        ("c", 0, 1, None, 0, "z")], 1, 2)
    ledger.add_placement([("a", None, False), ("b", 0.5, True), ("c", 2.0, True)])
    for ids, groups in ((["a"], None), (["c", "a"], None), (None, ["u1"])):
        with pytest.raises(UndeletableSampleError, match=r"deletable=false cannot be forgotten: a\."):
            plan_forget(ledger, DeletionRequest.of(ids, groups))
    assert plan_forget(ledger, DeletionRequest.of(["b", "c"], None)).new == {"b": (0, 0), "c": (0, 1)}
    assert ledger.undeletable(["a", "b", "c", "zz"]) == ["a"]
    ledger.close()


def test_simulate_command_compares_placements() -> None:
    from typer.testing import CliRunner

    from s3t.cli import app

    runner = CliRunner()
    args = ["simulate", "--shards", "2", "--slices", "3", "--trials", "200", "--placement",
            "prior", "--skew", "zipf:1.1", "--users", "300", "--deletions", "40"]
    out = runner.invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)["placement"]
    assert res["skew"] == 1.1 and res["users"] == 300 and res["stages_cut"] > 0.3
    text = runner.invoke(app, args).output
    assert "stages invalidated per deletion: uniform" in text and "cut" in text
    for extra, message in ((["--skew", "zipf:-2"], "--skew: skew must be"),
                           (["--window", "0"], "--window: window must be >= 1"),
                           (["--deletions", "301"], "--deletions: deletions (301) cannot exceed"),
                           (["--placement", "smart"], "--placement: must be uniform or prior")):
        out = runner.invoke(app, [*args, *extra])
        assert out.exit_code == 2 and out.output.startswith(f"error: {message}"), out.output
