"""`s3t plan`'s accuracy prediction: the simulator's depth states, the DepthTable that turns
them into a served accuracy, the choice between S3T and SISA it drives, and the table built
from a real run, which must score what the run serves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from s3t.cli import app
from s3t.plan.accuracy import DepthTable
from s3t.plan.advice import ACCURACY_TIE, Workload, recommend
from s3t.plan.orderings import make_orderings
from s3t.plan.stream_sim import merge_states, simulate_stream, simulate_window

runner = CliRunner()


def one_hot(labels: np.ndarray, right: bool, confidence: float, k: int = 3) -> np.ndarray:
    """Probabilities putting ``confidence`` on the true label (``right``) or on the next one."""
    probs = np.full((len(labels), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(labels)), (labels if right else labels + 1) % k] = confidence
    return probs


def table(partial_right: bool, m: int = 2, n_slices: int = 3, weights: str = "mean") -> DepthTable:
    """Every shard right at full depth (0.6 confident); at partial depths right or
    confidently wrong (0.9)."""
    labels = np.arange(12) % 3
    members = {(k, d): [one_hot(labels, True, 0.6) if d == n_slices
                        else one_hot(labels, partial_right, 0.9)]
               for k in range(m) for d in range(1, n_slices + 1)}
    weight = {(k, d): (1.0 if weights == "mean" else float(d)) for k, d in members}
    return DepthTable(n_slices=n_slices, labels=labels, members=members, weights=weight,
                      n_shards=m)


@pytest.mark.parametrize("simulate", ["stream", "window"])
def test_depth_states_add_up_to_the_simulated_capacity_and_depth(simulate: str) -> None:
    orderings = make_orderings("cyclic", 3, 3)
    if simulate == "stream":
        out = simulate_stream(3, orderings, 10.0, 1 / 20, deletions=300, warmup=20, seed=4)
    else:
        out = simulate_window(3, orderings, 10.0, 1 / 20, 2000.0, trials=5, seed=4)
    states = out["depth_states"]
    assert len(states) > 3 and all(len(s) == 3 and list(s) == sorted(s) for s in states)
    assert sum(states.values()) == pytest.approx(1.0)
    assert sum(p * sum(d == 3 for d in s) / 3 for s, p in states.items()) == \
        pytest.approx(out["capacity"])
    assert sum(p * sum(s) / 9 for s, p in states.items()) == \
        pytest.approx(out["served_depth_fraction"])


def test_merged_states_are_a_mixture() -> None:
    merged = merge_states([{(1, 1): 1.0}, {(1, 1): 0.5, (0, 1): 0.5}], [0.25, 0.75])
    assert merged == pytest.approx({(1, 1): 0.625, (0, 1): 0.375})


def test_a_state_scores_the_weighted_ensemble_of_its_shards() -> None:
    useless = table(partial_right=False)
    assert useless.scores([3, 3]) == 1.0
    assert useless.scores([3, 0]) == 1.0          # one shard out: the other serves
    assert useless.scores([0, 0]) == 0.0          # nothing serves: every request fails
    assert useless.scores([1, 3]) == 0.0          # mean: the confident wrong shard wins
    by_depth = table(partial_right=False, weights="depth")
    assert by_depth.scores([1, 3]) == 1.0         # weighed by depth, the full shard wins
    voting = DepthTable(3, useless.labels, useless.members, useless.weights, 2, vote=True)
    assert voting.scores([1, 3]) == pytest.approx(2 / 3)  # a tied vote goes to the lower label


def test_a_state_is_averaged_over_the_shards_its_depths_can_fall_on() -> None:
    t = table(partial_right=True)
    labels = t.labels
    members = dict(t.members)
    members[(0, 1)] = [one_hot(labels, False, 0.9)]  # only shard 0 is wrong at depth 1
    mixed = DepthTable(3, labels, members, t.weights, 2)
    assert mixed.scores([1, 0]) == 0.0 and mixed.scores([0, 1]) == 1.0
    assert mixed.state_accuracy((0, 1)) == pytest.approx(0.5)
    assert mixed.depth_scores() == pytest.approx([0.5, 1.0, 1.0])


def test_a_plan_is_scored_only_where_its_slices_line_up_with_the_run() -> None:
    t = table(partial_right=False, n_slices=4)
    assert t.expected({(1, 1): 1.0}, 2, 1, 1) == 1.0     # SISA's depth 1 is the run's 4
    assert t.expected({(1, 2): 1.0}, 2, 2, 1) == 0.0     # L=2: depth 1 is the run's 2
    assert t.expected({(1, 2): 0.5, (2, 2): 0.5}, 2, 2, 1) == pytest.approx(0.5)
    assert t.expected({(1, 1): 1.0}, 2, 3, 1) is None    # 3 does not divide 4
    assert t.expected({(1, 1, 1): 1.0}, 3, 1, 1) is None  # another shard count


def test_sisa_is_scored_on_its_own_orderings_stage_where_the_run_has_it() -> None:
    t = table(partial_right=True)
    assert t.expected({(1, 1): 1.0}, 2, 1, 1) == 1.0
    wrong = one_hot(t.labels, False, 0.9)
    with_sisa = DepthTable(3, t.labels, t.members, t.weights, 2, sisa={0: wrong, 1: wrong})
    assert with_sisa.expected({(1, 1): 1.0}, 2, 1, 1) == 0.0   # SISA's plan: its own stages
    assert with_sisa.expected({(3, 3): 1.0}, 2, 3, 1) == 1.0   # S3T's: the routes


def stream(rate_per_min: float) -> Workload:
    return Workload(samples=600, rate_per_day=rate_per_min * 1440, throughput=10.0, epochs=1)


def test_plan_recommends_sisa_where_partial_depths_hurt_and_s3t_where_they_serve() -> None:
    work = stream(4.0)
    hurt = recommend(work, shards=[2], max_slices=3, table=table(partial_right=False))
    assert hurt["chosen_by"] == "accuracy"
    best = hurt["recommended"]
    assert (best["slices"], best["budget"]) == (1, 1), hurt["why"]
    assert hurt["why"].startswith("S3T cannot win here") and "0.00 / 0.00 / 1.00" in hurt["why"]
    assert best["accuracy"] > hurt["best_s3t"]["accuracy"]
    serve = recommend(work, shards=[2], max_slices=3, table=table(partial_right=True))
    best = serve["recommended"]
    assert best["slices"] == 3 and best["accuracy"] > serve["sisa"]["accuracy"], serve["why"]
    assert "against" in serve["why"] and serve["accuracy_basis"]["depth_scores"] == [1, 1, 1]
    # L=2 does not divide the run's 3: listed, not scored; without a table: by capacity
    unscored = [r for r in serve["candidates"] if r["slices"] == 2]
    assert unscored and all(r["accuracy"] is None for r in unscored)
    assert recommend(work, shards=[2], max_slices=3)["chosen_by"] == "capacity"


def test_without_deletions_a_plan_serves_its_undisturbed_accuracy() -> None:
    report = recommend(stream(0.0), shards=[2], max_slices=3, table=table(partial_right=False))
    assert all(r["accuracy"] == 1.0 for r in report["candidates"] if r["accuracy"] is not None)


def test_the_table_of_a_run_scores_what_the_run_serves(run_copy) -> None:
    """Built from a real run, before and after a deletion demotes a shard, the table's
    accuracy for the served depths equals the served model's on the validation samples."""
    from s3t.engine import S3T

    est = S3T.load(run_copy)
    try:
        rows = est.run.ledger.eval_samples()
        texts, labels = [r[2] for r in rows], np.array([r[1] for r in rows])

        def served_accuracy() -> float:
            return float(np.mean(est.predict(texts).label_ids == labels))

        full = est.depth_table()
        assert sorted(full.members) == [(k, d) for k in range(2) for d in (1, 2)]
        # held-out rows given explicitly score the same way (the last four, reversed)
        given = est.depth_table(rows=rows[:-5:-1])
        assert given.labels.tolist() == labels[:-5:-1].tolist()
        assert all(np.allclose(g, f[:-5:-1], atol=1e-9) for key in full.members
                   for g, f in zip(given.members[key], full.members[key], strict=True))
        assert all(len(full.members[(k, 2)]) == 2 for k in range(2))  # serve_orderings all
        # SISA's stand-in: each shard's full-depth stage of the identity ordering (0, 1)
        assert sorted(full.sisa) == [0, 1]
        assert all(any(np.array_equal(full.sisa[k], m) for m in full.members[(k, 2)])
                   for k in range(2))
        assert full.scores([2, 2]) == served_accuracy()
        victim = est.run.ledger.cell_samples(0, 0)[0][0]
        est.forget([victim])
        depths = est.run.ledger.served_depths()
        assert depths == {"0": 1, "1": 2}, depths
        after = est.depth_table()
        assert sorted(after.members) == [(0, 1), (1, 1), (1, 2)]
        assert sorted(after.sisa) == [1]  # shard 0's identity chain saw the victim
        assert after.scores([1, 2]) == served_accuracy()
        assert after.weights[(0, 1)] == 1.0 and after.weights[(1, 2)] == 2.0  # ensemble depth
    finally:
        est.close()


def test_plan_command_predicts_accuracy_from_a_run(trained) -> None:
    out = runner.invoke(app, ["plan", "--run", str(trained), "--rate", "30/h", "--json",
                              "--shards", "2"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["chosen_by"] == "accuracy"
    assert report["accuracy_basis"]["validation_samples"] == 12
    scored = [r for r in report["candidates"] if r["accuracy"] is not None]
    assert {(r["slices"], r["budget"]) for r in scored} == {(1, 1), (2, 1), (2, 2)}
    top = max(r["accuracy"] for r in scored)
    assert report["recommended"]["accuracy"] >= top - ACCURACY_TIE
    text = runner.invoke(app, ["plan", "--run", str(trained), "--rate", "30/h", "--shards", "2"])
    assert "predicted served accuracy" in text.stdout, text.output
    off = json.loads(runner.invoke(app, ["plan", "--run", str(trained), "--rate", "30/h",
                                         "--json", "--shards", "2", "--no-accuracy"]).stdout)
    assert off["chosen_by"] == "capacity" and "accuracy" not in off["recommended"]
    other = json.loads(runner.invoke(app, ["plan", "--run", str(trained), "--rate", "30/h",
                                           "--json", "--shards", "3"]).stdout)
    assert other["chosen_by"] == "capacity"
    assert "run's 2 shards" in other["accuracy_not_predicted"]
