"""Deletion simulation against the closed forms, BMS vs cyclic, and the retention formulas."""

from __future__ import annotations

import json
import math
import time
from math import comb

import numpy as np
import pytest

from s3t.plan import (
    bms_orderings,
    cyclic_orderings,
    deletion_rate,
    deletion_rate_s3t,
    deletion_rate_shard_out,
    deletion_rate_sisa,
    distinct_first_slices,
    expected_prefix_length,
    first_shard_death,
    full_orderings,
    harmonic,
    make_orderings,
    random_orderings,
    retention_exact,
    retention_s3t,
    retention_sisa,
    simulate,
    simulate_retention,
    sisa_orderings,
)

# ----------------------------------------------------------------- deletion rate


def test_harmonic_and_paper_numbers():
    assert harmonic(0) == 0
    assert harmonic(1) == 1
    assert harmonic(4) == pytest.approx(25 / 12)
    # PAPER.md, m=5, L=4: SISA 45.7, B=2 58.6, B=4 72.0.
    assert deletion_rate_sisa(5, 4) == pytest.approx(45.67, abs=0.01)
    assert deletion_rate_s3t(5, 4, 2) == pytest.approx(58.58, abs=0.01)
    assert deletion_rate_s3t(5, 4, 4) == pytest.approx(71.95, abs=0.01)
    with pytest.raises(ValueError, match="b_prime"):
        deletion_rate_s3t(5, 4, 5)


@pytest.mark.parametrize(
    ("m", "n", "b", "strategy"),
    [
        (5, 4, 1, "sisa"),
        (5, 4, 2, "cyclic"),
        (5, 4, 4, "cyclic"),
        (5, 4, 8, "cyclic"),
        (3, 5, 3, "bms"),
        (10, 3, 2, "cyclic"),
        (2, 6, 4, "random"),
    ],
)
def test_closed_form_deletion_rate_within_3_percent_of_simulation(m, n, b, strategy):
    orderings = make_orderings(strategy, n, b, seed=1)
    res = simulate(m, n, orderings, trials=5000, seed=11, checkpoints=())
    d = distinct_first_slices(orderings)
    closed = deletion_rate(m, orderings)
    assert closed == pytest.approx(m * n * harmonic(m * d))
    if strategy in ("cyclic", "bms", "sisa"):
        assert d == min(b, n)  # the paper's B' = min(B, L)
        assert closed == pytest.approx(deletion_rate_s3t(m, n, min(b, n)))
    assert abs(res.deletion_rate - closed) < 0.03 * closed
    first = first_shard_death(m, orderings)
    sem = res.first_shard_death_std / math.sqrt(res.trials)
    assert abs(res.first_shard_death - first) < max(0.03 * first, 4 * sem)


def test_first_shard_death_simple_cases():
    # SISA: a request kills some shard iff it hits a first slice (probability 1/L): mean L.
    assert first_shard_death(5, sisa_orderings(4)) == pytest.approx(4.0, rel=1e-8)
    # One shard: first death is the system's death.
    o = cyclic_orderings(4, 3)
    assert first_shard_death(1, o) == pytest.approx(deletion_rate(1, o), rel=1e-8)


def test_poisson_integral_agrees_with_harmonic_closed_form():
    # A prior a hair away from uniform takes the integral path; it must match m L H_{md}.
    eps = 1e-9
    prior = [0.25 + eps, 0.25 - eps, 0.25, 0.25]
    for b in (1, 2, 4):
        o = cyclic_orderings(4, b)
        assert deletion_rate(5, o, prior) == pytest.approx(deletion_rate_s3t(5, 4, b), rel=1e-6)


SKEWED = [0.1, 0.4, 0.4, 0.1]


@pytest.mark.parametrize("strategy", ["cyclic", "bms"])
def test_closed_forms_hold_under_a_skewed_prior(strategy):
    o = make_orderings(strategy, 4, 2, prior=SKEWED)
    res = simulate(5, 4, o, prior=SKEWED, trials=5000, seed=3, checkpoints=(5, 20))
    closed = deletion_rate(5, o, SKEWED)
    assert abs(res.deletion_rate - closed) < 0.03 * closed
    first = first_shard_death(5, o, SKEWED)
    assert abs(res.first_shard_death - first) < 0.03 * first
    for r, sim in zip(res.checkpoints, res.mean_prefix_length, strict=True):
        assert sim == pytest.approx(expected_prefix_length(5, o, r, SKEWED), abs=0.04)


def test_mean_prefix_length_matches_exact_expectation():
    o = cyclic_orderings(4, 4)
    res = simulate(5, 4, o, trials=4000, seed=5, checkpoints=(0, 1, 5, 10, 20, 50))
    assert res.mean_prefix_length[0] == 4.0
    assert res.mean_prefix_length[1] == pytest.approx(3.8)  # one hit shard still serves 3
    for r, sim in zip(res.checkpoints, res.mean_prefix_length, strict=True):
        assert sim == pytest.approx(expected_prefix_length(5, o, r), abs=0.03)
    assert list(res.mean_prefix_length) == sorted(res.mean_prefix_length, reverse=True)


# ----------------------------------------------------------------- BMS vs cyclic


def test_bms_absorbs_more_deletions_than_cyclic_under_skew_with_small_budget():
    for prior in (SKEWED, [0.55, 0.25, 0.15, 0.05]):
        cyc = cyclic_orderings(4, 2)
        bms = bms_orderings(prior, 2)
        sim_c = simulate(5, 4, cyc, prior=prior, trials=3000, seed=1, checkpoints=())
        sim_b = simulate(5, 4, bms, prior=prior, trials=3000, seed=1, checkpoints=())
        assert sim_b.deletion_rate > 1.2 * sim_c.deletion_rate
        assert deletion_rate(5, bms, prior) > 1.2 * deletion_rate(5, cyc, prior)


TWO_HEAVY = [0.05, 0.4, 0.05, 0.45, 0.05]


def test_bms_keeps_longer_prefixes_than_cyclic_at_full_latin_budget():
    cyc = cyclic_orderings(5, 5)
    bms = bms_orderings(TWO_HEAVY, 5)
    # Same first slices (all of them), so the same deletion rate ...
    assert deletion_rate(5, bms, TWO_HEAVY) == pytest.approx(deletion_rate(5, cyc, TWO_HEAVY))
    # ... but BMS pushes the heavy slices back, so the served prefixes stay longer.
    cps = (10, 25, 50)
    sim_c = simulate(5, 5, cyc, prior=TWO_HEAVY, trials=3000, seed=2, checkpoints=cps)
    sim_b = simulate(5, 5, bms, prior=TWO_HEAVY, trials=3000, seed=2, checkpoints=cps)
    for r, c, b in zip(cps, sim_c.mean_prefix_length, sim_b.mean_prefix_length, strict=True):
        assert b > c + 0.2
        assert expected_prefix_length(5, bms, r, TWO_HEAVY) > expected_prefix_length(
            5, cyc, r, TWO_HEAVY
        )


def test_bms_is_not_always_better_at_full_latin_budget():
    # BMS scores each ordering alone; the served prefix is a max over orderings. With
    # SKEWED, BMS pairs slices into repeated 2-sets ({2,3} twice, {0,1} twice) while the
    # cyclic square has four distinct ones, and cyclic keeps slightly longer prefixes.
    bms = bms_orderings(SKEWED, 4)
    assert len({frozenset(o[:2]) for o in bms}) == 2
    assert len({frozenset(o[:2]) for o in cyclic_orderings(4, 4)}) == 4
    for r in (10, 20):
        assert expected_prefix_length(5, bms, r, SKEWED) < expected_prefix_length(
            5, cyclic_orderings(4, 4), r, SKEWED
        )


# ----------------------------------------------------------------- simulate API


def test_simulation_is_seeded_and_serialisable():
    o = cyclic_orderings(4, 2)
    a = simulate(5, 4, o, trials=500, seed=7)
    assert a == simulate(5, 4, o, trials=500, seed=7)
    assert a.deletion_rate != simulate(5, 4, o, trials=500, seed=8).deletion_rate
    d = json.loads(json.dumps(a.to_dict()))
    for key in (
        "deletion_rate",
        "deletion_rate_std",
        "first_shard_death",
        "first_shard_death_std",
        "checkpoints",
        "mean_prefix_length",
        "n_shards",
        "n_slices",
        "budget",
        "trials",
        "seed",
        "prior",
    ):
        assert key in d
    assert d["budget"] == 2
    assert a.first_shard_death <= a.deletion_rate


def test_every_request_counts_including_repeats_and_the_last():
    # One shard, one slice: the first request kills it.
    res = simulate(1, 1, [(0,)], trials=50, seed=0)
    assert res.deletion_rate == 1.0
    assert res.deletion_rate_std == 0.0
    # One shard, SISA on 2 slices: geometric with p = 1/2 -> mean 2 (repeats on slice 1 count).
    res = simulate(1, 2, [(0, 1)], trials=20000, seed=0, checkpoints=())
    assert res.deletion_rate == pytest.approx(2.0, abs=0.05)


def test_default_size_is_fast():
    start = time.perf_counter()
    simulate(5, 4, cyclic_orderings(4, 4), trials=2000, seed=0)
    simulate(5, 4, full_orderings(4), trials=2000, seed=0)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_shards": 0}, "n_shards"),
        ({"trials": 0}, "trials"),
        ({"orderings": [(0, 1, 2)]}, "permutation"),
        ({"orderings": []}, "at least one"),
        ({"checkpoints": (-1,)}, "checkpoints"),
        ({"prior": [0.5, 0.5]}, "prior must have one"),
        ({"prior": [0.0, 0.5, 0.25, 0.25]}, "can never die"),
    ],
)
def test_simulate_rejects_bad_input(kwargs, match):
    args = {"n_shards": 5, "n_slices": 4, "orderings": sisa_orderings(4), "trials": 10}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate(**args)


# ----------------------------------------------------------------- retention


def _close_to_sim(exact: np.ndarray, sim: np.ndarray, trials: int) -> bool:
    se = np.sqrt(exact * (1 - exact) / trials)
    return bool(np.all(np.abs(exact - sim) <= 5 * se + 1e-3))


@pytest.mark.parametrize("n", [3, 4, 6])
def test_sisa_retention_formula_is_exact(n):
    ident = sisa_orderings(n)
    for r in (0, 1, 2, 5, 12):
        exact = retention_exact(ident, r)
        formula = np.array([retention_sisa(n, k, r) for k in range(n + 1)])
        np.testing.assert_allclose(exact, formula, atol=1e-12)
        # B = 1: the paper's S3T formula reduces to SISA's.
        paper = np.array([retention_s3t(n, k, r, 1) for k in range(n + 1)])
        np.testing.assert_allclose(paper, formula, atol=1e-12)
    sim = simulate_retention(ident, 3, trials=20000, seed=1)
    assert _close_to_sim(retention_exact(ident, 3), sim, 20000)


@pytest.mark.parametrize(
    "orderings",
    [
        cyclic_orderings(4, 2),
        cyclic_orderings(4, 4),
        cyclic_orderings(5, 7),
        full_orderings(4),
        random_orderings(5, 6, seed=3),
        bms_orderings([0.1, 0.2, 0.3, 0.4], 4),
    ],
)
def test_exact_retention_matches_simulation(orderings):
    for r in (1, 3, 8):
        sim = simulate_retention(orderings, r, trials=20000, seed=r)
        assert _close_to_sim(retention_exact(orderings, r), sim, 20000)
    prior = [0.1, 0.2, 0.3, 0.4] + [0.0] * (len(orderings[0]) - 4)
    sim = simulate_retention(orderings, 4, prior=prior, trials=20000, seed=9)
    assert _close_to_sim(retention_exact(orderings, 4, prior), sim, 20000)


def _all_hit_prob(d: int, n: int, r: int) -> float:
    """P[r uniform deletions over n slices hit all of d given slices] (inclusion-exclusion)."""
    return sum((-1) ** j * comb(d, j) * (1 - j / n) ** r for j in range(d + 1))


@pytest.mark.parametrize(("n", "b"), [(4, 2), (4, 4), (6, 3), (6, 6)])
def test_first_slice_retention_exact_form_and_paper_lower_bound(n, b):
    o = cyclic_orderings(n, b)
    for r in range(0, 15):
        exact = retention_exact(o, r)[1]
        assert exact == pytest.approx(1 - _all_hit_prob(b, n, r), abs=1e-12)
        paper = retention_s3t(n, 1, r, b)
        if r == 0:
            assert paper == exact == 1.0
        else:
            assert paper < exact  # strict lower bound for B' >= 2, r >= 1
        if r < b:
            assert exact == pytest.approx(1.0)


def test_overlapping_prefixes_follow_the_pairwise_rule():
    def pair_exact(n, k, o, r):
        a = (1 - k / n) ** r
        return 2 * a - (1 - (2 * k - o) / n) ** r

    cases = [
        # orderings, k, overlap o of the two k-prefix sets, expected sign of exact - paper
        (cyclic_orderings(4, 2), 2, 1, 0),  # o = k^2/L = 1: independent, formula exact
        (cyclic_orderings(6, 2), 2, 1, -1),  # o = 1 > 4/6: formula overestimates
        (cyclic_orderings(6, 2), 3, 2, -1),  # o = 2 > 9/6
        ([(0, 1, 2, 3, 4, 5), (3, 4, 5, 0, 1, 2)], 2, 0, 1),  # o = 0 < 4/6: underestimates
        ([(0, 1, 2, 3, 4, 5), (3, 4, 5, 0, 1, 2)], 3, 0, 1),
    ]
    for orderings, k, o, sign in cases:
        n = len(orderings[0])
        for r in range(1, 12):
            exact = retention_exact(orderings, r)[k]
            assert exact == pytest.approx(pair_exact(n, k, o, r), abs=1e-12)
            diff = exact - retention_s3t(n, k, r, 2)
            if sign == 0:
                assert abs(diff) < 1e-12
            else:
                assert np.sign(diff) == sign and abs(diff) > 1e-12


def test_cyclic_l4_b4_k3_needs_all_deletions_in_one_slice():
    o = cyclic_orderings(4, 4)
    for r in range(1, 10):
        exact = retention_exact(o, r)[3]
        assert exact == pytest.approx(4.0 ** (1 - r), abs=1e-12)
        assert exact > retention_s3t(4, 3, r, 4)
    sim = simulate_retention(o, 2, trials=20000, seed=0)[3]
    assert sim == pytest.approx(0.25, abs=0.015)  # formula says 0.2275


def _prob_at_most_distinct(n: int, r: int, j_max: int) -> float:
    """P[r >= 1 uniform deletions over n slices hit at most j_max distinct slices]."""
    return sum(comb(n, j) * _all_hit_prob(j, j, r) * (j / n) ** r for j in range(1, j_max + 1))


def test_full_budget_retention_counts_sets_not_ordered_prefixes():
    for n in (4, 5):
        o = full_orderings(n)
        for r in range(0, 10):
            exact = retention_exact(o, r)
            for k in range(n + 1):
                want = _prob_at_most_distinct(n, r, n - k) if r else 1.0
                assert exact[k] == pytest.approx(want, abs=1e-12)
    # The paper's formula is below the truth for small r and far above it for larger r.
    assert retention_exact(full_orderings(4), 2)[2] == pytest.approx(1.0)
    assert retention_s3t(4, 2, 2, 24) == pytest.approx(0.968, abs=1e-3)
    assert retention_exact(full_orderings(4), 5)[2] == pytest.approx(0.1797, abs=1e-4)
    assert retention_s3t(4, 2, 5, 24) == pytest.approx(0.3168, abs=1e-4)
    assert retention_exact(full_orderings(5), 5)[4] == pytest.approx(0.0016, abs=1e-12)
    assert retention_s3t(5, 4, 5, 120) == pytest.approx(0.0377, abs=1e-4)
    sim = simulate_retention(full_orderings(5), 5, trials=20000, seed=4)
    assert sim[4] < 0.005  # the simulation sides with the exact value, not the formula


def test_trivial_cases_of_the_paper_formula_are_exact():
    for n, b in ((4, 3), (5, 5)):
        o = cyclic_orderings(n, b)
        assert retention_s3t(n, 0, 7, b) == retention_exact(o, 7)[0] == 1.0
        assert retention_s3t(n, n, 3, b) == retention_exact(o, 3)[n] == 0.0
        for k in range(n + 1):
            assert retention_s3t(n, k, 0, b) == retention_exact(o, 0)[k] == 1.0
    with pytest.raises(ValueError, match="k must be"):
        retention_s3t(4, 5, 1, 2)


def test_shard_out_rate_is_the_coupon_collector_over_shards():
    rng = np.random.default_rng(0)
    m, trials = 3, 4000
    counts = []
    for _ in range(trials):
        seen, n = set(), 0
        while len(seen) < m:
            seen.add(int(rng.integers(m)))
            n += 1
        counts.append(n)
    assert np.mean(counts) == pytest.approx(deletion_rate_shard_out(m), rel=0.03)
    assert deletion_rate_shard_out(1) == 1.0 and deletion_rate_shard_out(2) == 3.0
    with pytest.raises(ValueError, match="m must be >= 1"):
        deletion_rate_shard_out(0)
