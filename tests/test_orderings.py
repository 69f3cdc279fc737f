"""Orderings: permutations, distinctness, determinism, Latin squares, BMS behaviour, errors."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3t.plan import (
    STRATEGIES,
    bms_orderings,
    cyclic_orderings,
    full_orderings,
    make_orderings,
    prefix_score,
    random_orderings,
    sisa_orderings,
)


def _budget_for(strategy: str, n: int, b: int) -> int:
    if strategy == "sisa":
        return 1
    if strategy == "full":
        return math.factorial(n)
    return min(b, math.factorial(n))


@st.composite
def priors(draw, n: int):
    raw = draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
    total = sum(raw)
    return [x / total for x in raw]


@settings(max_examples=60, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    n=st.integers(1, 6),
    b=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_every_strategy_gives_distinct_permutations_deterministically(strategy, n, b, seed, data):
    budget = _budget_for(strategy, n, b)
    prior = data.draw(priors(n)) if strategy == "bms" else None
    orderings = make_orderings(strategy, n, budget, prior=prior, seed=seed)
    assert len(orderings) == budget
    assert len(set(orderings)) == budget
    for o in orderings:
        assert isinstance(o, tuple)
        assert sorted(o) == list(range(n))
        assert all(type(s) is int for s in o)
    assert make_orderings(strategy, n, budget, prior=prior, seed=seed) == orderings


def _is_latin(orderings) -> bool:
    n = len(orderings[0])
    return all(len({o[pos] for o in orderings}) == len(orderings) for pos in range(n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 7), data=st.data())
def test_cyclic_and_bms_are_latin_for_budget_up_to_l(n, data):
    b = data.draw(st.integers(1, n))
    assert _is_latin(cyclic_orderings(n, b))
    prior = data.draw(priors(n))
    assert _is_latin(bms_orderings(prior, b))
    assert _is_latin(make_orderings("bms", n, b))  # uniform default


def test_cyclic_small_budgets_are_rotations():
    assert cyclic_orderings(4, 4) == [(0, 1, 2, 3), (1, 2, 3, 0), (2, 3, 0, 1), (3, 0, 1, 2)]
    assert cyclic_orderings(4, 2) == [(0, 1, 2, 3), (1, 2, 3, 0)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_cyclic_extends_to_all_permutations_with_balanced_prefixes(n):
    every = cyclic_orderings(n, math.factorial(n))
    assert set(every) == set(itertools.permutations(range(n)))
    # After L!/(L-j)! orderings every ordered j-prefix appears exactly once.
    for j in range(1, n):
        count = math.factorial(n) // math.factorial(n - j)
        prefixes = [o[:j] for o in every[:count]]
        assert len(set(prefixes)) == count
    # Budgets are nested: a larger budget only adds orderings.
    for b in range(1, math.factorial(n)):
        assert cyclic_orderings(n, b) == every[:b]


def test_full_is_lexicographic_and_sisa_is_identity():
    assert full_orderings(3) == [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    assert make_orderings("full", 4, 24) == sorted(itertools.permutations(range(4)))
    assert sisa_orderings(4) == [(0, 1, 2, 3)]
    assert make_orderings("sisa", 5, 1) == [(0, 1, 2, 3, 4)]


def test_random_depends_on_seed_and_is_nested():
    a = random_orderings(6, 10, seed=1)
    assert a == random_orderings(6, 10, seed=1)
    assert a != random_orderings(6, 10, seed=2)
    assert random_orderings(6, 4, seed=1) == a[:4]


def test_prefix_score_matches_definition():
    # s = 1*(1-0.5)^1 + 2*(1-1)^1 = 0.5
    assert prefix_score((0, 1), [0.5, 0.5], t=1) == pytest.approx(0.5)
    p = [0.1, 0.2, 0.3, 0.4]
    expected = sum(
        (i + 1) * (1 - sum(p[s] for s in (3, 1, 0, 2)[: i + 1])) ** 2 for i in range(4)
    )
    assert prefix_score((3, 1, 0, 2), p, t=2) == pytest.approx(expected)
    # Rare slices first score higher than frequent slices first.
    assert prefix_score((0, 1, 2, 3), p) > prefix_score((3, 2, 1, 0), p)


SKEWED = [0.1, 0.4, 0.4, 0.1]


def test_bms_puts_rarely_deleted_slices_first():
    orderings = bms_orderings(SKEWED, 2)
    assert {o[0] for o in orderings} == {0, 3}
    scores = [prefix_score(o, SKEWED) for o in bms_orderings(SKEWED, 4)]
    assert scores == sorted(scores, reverse=True)
    # BMS is at least as good as the cyclic square on the BMS objective.
    bms_total = sum(scores)
    cyclic_total = sum(prefix_score(o, SKEWED) for o in cyclic_orderings(4, 4))
    assert bms_total > cyclic_total


def test_bms_beyond_l_keeps_the_square_and_samples_distinct_orderings():
    square = bms_orderings(SKEWED, 4)
    more = bms_orderings(SKEWED, 12, seed=3)
    assert more[:4] == square
    assert len(set(more)) == 12
    assert more == bms_orderings(SKEWED, 12, seed=3)
    # The full budget is reachable even when one slice is never deleted.
    assert set(bms_orderings([1.0, 0.0, 0.0], 6)) == set(itertools.permutations(range(3)))


def test_bms_extra_orderings_favour_rare_slices_first():
    prior = [0.02, 0.02, 0.02, 0.02, 0.46, 0.46]
    extra = bms_orderings(prior, 200, seed=0)[6:]
    firsts = np.bincount([o[0] for o in extra], minlength=6)
    assert firsts[:4].sum() > 2 * firsts[4:].sum()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_orderings("cyclic", 0, 1), "n_slices"),
        (lambda: make_orderings("cyclic", 4, 0), r"budget must be in \[1, 24\]"),
        (lambda: make_orderings("cyclic", 4, 25), r"budget must be in \[1, 24\]"),
        (lambda: make_orderings("random", 3, 7), r"budget must be in \[1, 6\]"),
        (lambda: make_orderings("sisa", 4, 2), "budget must be 1"),
        (lambda: make_orderings("full", 4, 4), "budget must be n_slices! = 24"),
        (lambda: make_orderings("nope", 4, 1), "strategy must be one of"),
        (lambda: make_orderings("bms", 4, 2, prior=[0.5, 0.5]), "prior must have one"),
        (lambda: make_orderings("bms", 3, 2, prior=[0.5, 0.6, -0.1]), r"prior entries"),
        (lambda: make_orderings("bms", 2, 2, prior=[0.5, 0.49]), "prior must sum to 1"),
        (lambda: make_orderings("cyclic", 2, 1, prior=[0.7, 0.7]), "prior must sum to 1"),
        (lambda: bms_orderings([0.5, 0.5], 1, t=0), "t must be"),
        (lambda: cyclic_orderings(3, 7), "budget"),
        (lambda: random_orderings(0, 1), "n_slices"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_planner_does_not_import_torch():
    code = "import sys, s3t.plan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
