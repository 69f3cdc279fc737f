"""Capacity planning: the queueing model against the event simulator, the recommendation
(S3T where it wins, SISA where it cannot), and `s3t plan`'s inputs and errors."""

from __future__ import annotations

import json

import pytest
from tiny import toy_dataset
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import S3TConfig
from s3t.engine import S3T
from s3t.plan.advice import Workload, fit_throughput, parse_rate, recommend, slice_prior_for
from s3t.plan.capacity import predict
from s3t.plan.orderings import make_orderings
from s3t.plan.stream_sim import simulate_stream, simulate_window

# (m, L, B, seconds between deletions): cell = 30 s / L, so a full chain is 15 (L+1) s;
# loads from light to the trainer busy about 70% of the time.
CASES = [(2, 1, 1, 100), (2, 1, 1, 50), (2, 2, 1, 100), (3, 3, 1, 100), (2, 3, 2, 300),
         (2, 3, 3, 300), (3, 3, 3, 150), (2, 4, 4, 1000)]


@pytest.mark.parametrize("m, n_slices, budget, gap", CASES)
def test_queueing_model_agrees_with_the_simulator_within_15_percent(m, n_slices, budget,
                                                                    gap) -> None:
    orderings = make_orderings("cyclic" if budget > 1 else "sisa", n_slices, budget)
    cell = 30.0 / n_slices
    sim = simulate_stream(m, orderings, cell, 1 / gap, deletions=3000, seed=1)
    model = predict(m, orderings, cell, 1 / gap)
    assert model.capacity == pytest.approx(sim["capacity"], rel=0.15)
    assert model.served_depth_fraction == pytest.approx(sim["served_depth_fraction"], rel=0.15)
    assert model.trainer_busy == pytest.approx(sim["busy_fraction"], rel=0.3)
    # near 1 a relative 15% says little: the losses themselves agree within 25%
    for key, value in (("capacity", model.capacity),
                       ("served_depth_fraction", model.served_depth_fraction)):
        assert 1 - value == pytest.approx(1 - sim[key], rel=0.25, abs=0.003), key
    assert model.capacity < 1 and model.served_depth_fraction >= model.capacity - 1e-12


def test_queueing_model_with_a_skewed_slice_prior_and_stage_overhead() -> None:
    prior = [0.05, 0.15, 0.8]
    orderings = make_orderings("bms", 3, 2, prior=prior)
    sim = simulate_stream(2, orderings, 10.0, 1 / 200, slice_prior=prior, deletions=3000,
                          seed=2, stage_overhead=5.0)
    model = predict(2, orderings, 10.0, 1 / 200, prior, stage_overhead=5.0)
    assert model.capacity == pytest.approx(sim["capacity"], rel=0.15)
    assert model.served_depth_fraction == pytest.approx(sim["served_depth_fraction"], rel=0.15)


def test_a_job_start_is_paid_each_time_a_deletion_finds_the_trainer_idle() -> None:
    """One shard, one slice: every deletion (1 per 500 s) finds the trainer idle and starts a
    job: 10 s of rebuild plus 20 s of start-up, so the trainer is busy about 30/500 of the
    time; the queueing model agrees, and both lose capacity to the start-up."""
    orderings = make_orderings("sisa", 1, 1)
    plain = simulate_stream(1, orderings, 10.0, 1 / 500, deletions=2000, seed=1)
    started = simulate_stream(1, orderings, 10.0, 1 / 500, deletions=2000, seed=1,
                              job_overhead=20.0)
    assert plain["busy_fraction"] == pytest.approx(10 / 500, rel=0.1)
    assert started["busy_fraction"] == pytest.approx(30 / 500, rel=0.1)
    model = predict(1, orderings, 10.0, 1 / 500, job_overhead=20.0)
    assert model.capacity == pytest.approx(started["capacity"], rel=0.02)
    assert model.trainer_busy == pytest.approx(started["busy_fraction"], rel=0.1)
    # several shards, a busier trainer: a job already running pays no new start-up
    orderings = make_orderings("cyclic", 3, 3)
    sim = simulate_stream(3, orderings, 10.0, 1 / 150, deletions=3000, seed=2,
                          job_overhead=15.0)
    model = predict(3, orderings, 10.0, 1 / 150, job_overhead=15.0)
    assert model.capacity == pytest.approx(sim["capacity"], rel=0.15)
    assert model.capacity < predict(3, orderings, 10.0, 1 / 150).capacity


def test_higher_rate_means_lower_capacity() -> None:
    orderings = make_orderings("cyclic", 3, 3)
    caps = [predict(2, orderings, 10.0, rate) for rate in (0, 1e-4, 1e-3, 5e-3, 2e-2)]
    assert caps[0].capacity == 1.0
    for lo, hi in zip(caps, caps[1:], strict=False):
        assert hi.capacity < lo.capacity
        assert hi.served_depth_fraction < lo.served_depth_fraction
        assert hi.retrain_seconds_per_day >= lo.retrain_seconds_per_day
    best = [recommend(Workload(2000, rate, 200.0), shards=[2])["recommended"]["capacity"]
            for rate in (50, 500, 5000)]
    assert best[0] > best[1] > best[2]


def test_s3t_is_recommended_where_it_wins_and_sisa_where_it_cannot() -> None:
    calm = recommend(Workload(samples=2000, rate_per_day=100, throughput=200.0), shards=[2])
    best = calm["recommended"]
    assert (best["slices"], best["budget"]) != (1, 1) and calm["meets_target"]
    assert best["served_depth_fraction"] > calm["sisa"]["served_depth_fraction"]
    assert calm["why"].startswith("S3T keeps")

    storm = recommend(Workload(samples=2000, rate_per_day=20000, throughput=200.0), shards=[2])
    best = storm["recommended"]
    assert (best["slices"], best["budget"]) == (1, 1), storm["why"]
    assert storm["why"].startswith("S3T cannot win here")
    assert best["capacity"] > storm["best_s3t"]["capacity"]
    assert not storm["meets_target"] and "saturated" in storm["retrain_policy"]


def test_the_target_picks_the_fewest_shards_that_reach_it() -> None:
    rep = recommend(Workload(samples=4000, rate_per_day=2000, throughput=200.0), target=0.9)
    best = rep["recommended"]
    assert best["capacity"] >= 0.9
    assert not any(r["capacity"] >= 0.9 for r in rep["candidates"] if r["shards"] < best["shards"])


def test_placement_by_prior_gives_the_planner_a_skewed_slice_prior() -> None:
    work = Workload(samples=2000, rate_per_day=500, throughput=200.0, skew=1.1, users=500,
                    placement="prior")
    prior = slice_prior_for(work, 3)
    assert prior is not None and prior[2] > 0.8 and prior[0] < prior[1] < prior[2]
    assert slice_prior_for(Workload(2000, 500, 200.0, skew=1.1), 3) is None
    row = recommend(work, shards=[2], max_slices=3)["recommended"]
    assert row["slices"] == 1 or row["strategy"] in ("bms", "sisa")


def test_rates_and_throughput_fits() -> None:
    assert parse_rate("10/day") == 10 and parse_rate("2/h") == 48
    assert parse_rate("1/min") == 1440 and parse_rate("0.5/s") == 43200
    for bad in ("10", "ten/day", "-1/h", "3/fortnight", "inf/h"):
        with pytest.raises(ValueError, match="expected a rate like 10/day"):
            parse_rate(bad)
    visits = [100, 200, 300, 600]
    throughput, overhead = fit_throughput(visits, [2 + v / 50 for v in visits])
    assert throughput == pytest.approx(50) and overhead == pytest.approx(2)
    assert fit_throughput([100, 100], [2, 2]) == (50.0, 0.0)
    with pytest.raises(ValueError, match="at least one stage"):
        fit_throughput([], [])


@pytest.mark.parametrize("work, message", [
    (Workload(0, 1, 1.0), "samples must be an integer >= 1"),
    (Workload(10, -1, 1.0), "rate_per_day must be a finite number >= 0"),
    (Workload(10, 1, 0.0), "throughput must be > 0"),
    (Workload(10, 1, 1.0, users=11), r"users must be in \[1, samples=10\]"),
])
def test_bad_workloads_are_refused(work, message) -> None:
    with pytest.raises(ValueError, match=message):
        recommend(work)


runner = CliRunner()


def test_plan_command_prints_a_recommendation_and_json() -> None:
    out = runner.invoke(app, ["plan", "--samples", "2000", "--rate", "100/day",
                              "--throughput", "200", "--shards", "2"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("recommended: --shards 2 --slices")
    out = runner.invoke(app, ["plan", "--samples", "2000", "--rate", "20000/day",
                              "--throughput", "200", "--shards", "2", "--json"])
    report = json.loads(out.stdout)
    assert (report["recommended"]["slices"], report["recommended"]["budget"]) == (1, 1)
    assert report["why"].startswith("S3T cannot win")


@pytest.mark.parametrize("args, message", [
    (["--samples", "10", "--rate", "often", "--throughput", "1"], "--rate: expected a rate"),
    (["--samples", "10", "--rate", "1/h"], "--throughput: give --throughput"),
    (["--rate", "1/h", "--throughput", "1"], "--samples: give --samples"),
    (["--samples", "10", "--rate", "1/h", "--throughput", "1", "--skew", "zipf"], "--skew:"),
    (["--samples", "10", "--rate", "1/h", "--throughput", "0"], "--throughput: throughput must"),
    (["--samples", "10", "--rate", "1/h", "--throughput", "1", "--shards", "x"], "--shards:"),
    (["--samples", "10", "--rate", "1/h", "--throughput", "1", "--target", "2"], "--target:"),
    (["--samples", "10", "--rate", "1/h", "--throughput", "1", "--job-overhead", "-1"],
     "--job-overhead: job_overhead must be"),
])
def test_plan_command_errors_are_one_line(args, message) -> None:
    out = runner.invoke(app, ["plan", *args])
    assert out.exit_code == 2
    assert out.output.startswith(f"error: {message}") and out.output.count("\n") == 1, out.output


def test_plan_reads_throughput_from_a_run(trained) -> None:
    out = runner.invoke(app, ["plan", "--run", str(trained), "--rate", "10/day", "--json",
                              "--shards", "2"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    work = report["workload"]
    assert work["samples"] == 48 and work["epochs"] == 1 and work["throughput"] > 0
    assert report["timed_stages"] == 8  # m=2 shards x 4 stages (L=2, B=2)


def test_plan_from_an_anchored_run_counts_only_the_samples_in_cells(tiny_bert, tmp_path) -> None:
    """The anchor set (every fifth sample: 6 of 30) is no cell's and never deleted: the plan's
    samples are the retained deletable ones (30 - 6 anchors - 1 forgotten)."""
    data = toy_dataset(30)
    data.deletable = [i % 5 != 2 for i in range(30)]
    cfg = S3TConfig(model=tiny_bert, shards=2, slices=2, budget=1, epochs=1, batch_size=8,
                    seed=3, anchor=True)
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    assert est.ledger.anchor_count() == 6
    est.forget(["s0000"])
    est.close()
    out = runner.invoke(app, ["plan", "--run", str(tmp_path / "run"), "--rate", "10/day",
                              "--json", "--shards", "2"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["workload"]["samples"] == 23


def test_a_window_from_a_fresh_run_starts_at_full_capacity_and_tends_to_the_steady_state() -> None:
    orderings = make_orderings("cyclic", 3, 3)
    rate, cell = 1 / 4, 10.0  # saturated: the steady state keeps few shards at full depth
    steady = simulate_stream(5, orderings, cell, rate, deletions=3000, seed=3)
    short = simulate_window(5, orderings, cell, rate, horizon=60.0, trials=100, seed=3)
    long = simulate_window(5, orderings, cell, rate, horizon=6000.0, trials=3, seed=3)
    assert steady["capacity"] < 0.2
    assert short["capacity"] > steady["capacity"] + 0.2  # the run began whole
    assert long["capacity"] == pytest.approx(steady["capacity"], abs=0.05)
    assert short["deletions"] == pytest.approx(rate * 60.0, rel=0.2)


def test_a_quiet_tail_lets_the_window_recover() -> None:
    orderings = make_orderings("cyclic", 3, 3)
    busy = simulate_window(5, orderings, 10.0, 1 / 4, horizon=600.0, trials=40, seed=4)
    tail = simulate_window(5, orderings, 10.0, 1 / 4, horizon=600.0, arrivals_until=200.0,
                           trials=40, seed=4)
    assert tail["capacity"] > busy["capacity"] + 0.1
    assert tail["deletions"] < busy["deletions"]


def test_plan_over_a_horizon_predicts_the_window_not_the_steady_state() -> None:
    args = ["plan", "--rate", "36/min", "--samples", "1000", "--throughput", "30", "--epochs",
            "1", "--shards", "5", "--max-slices", "3", "--json"]
    steady = json.loads(CliRunner().invoke(app, args).stdout)["recommended"]
    window = json.loads(CliRunner().invoke(app, [*args, "--horizon", "150s"]).stdout)
    assert window["workload"]["horizon_s"] == 150.0
    assert "from a fully trained run" in window["recommended"]["method"]
    assert window["recommended"]["capacity"] > steady["capacity"] + 0.05
    long = json.loads(CliRunner().invoke(app, [*args, "--horizon", "30d"]).stdout)["recommended"]
    assert "then the steady state" in long["method"]
    assert long["capacity"] == pytest.approx(steady["capacity"], abs=0.03)


@pytest.mark.parametrize("bad", ["8x", "0h", "-3s", "h", "nan s"])
def test_plan_refuses_a_horizon_that_is_not_a_duration(bad: str) -> None:
    result = CliRunner().invoke(app, ["plan", "--rate", "1/min", "--samples", "100",
                                      "--throughput", "10", "--horizon", bad])
    assert result.exit_code != 0
    assert "--horizon" in result.output and "like 150s, 30min, 8h or 2d" in result.output
