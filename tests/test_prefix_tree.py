"""Prefix tree: stage counts with and without sharing, structure, training cost."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3t.plan import (
    PrefixTree,
    StageNode,
    cyclic_orderings,
    full_orderings,
    random_orderings,
    sisa_orderings,
    stages_full,
)


def test_full_budget_l4_has_64_stages_per_shard_and_96_without_sharing():
    tree = PrefixTree(full_orderings(4))
    assert tree.count() == 64  # 4 + 12 + 24 + 24
    assert tree.count_without_sharing() == 96
    assert [sum(1 for s in tree.stages if s.depth == k) for k in range(1, 5)] == [4, 12, 24, 24]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_full_budget_matches_closed_form(n):
    assert PrefixTree(full_orderings(n)).count() == stages_full(n)
    assert stages_full(n) == sum(math.factorial(n) // math.factorial(n - k) for k in range(1, n + 1))


def test_cyclic_with_distinct_first_slices_shares_nothing():
    for b in range(1, 6):
        tree = PrefixTree(cyclic_orderings(5, b))
        assert tree.count() == tree.count_without_sharing() == 5 * b


def test_shared_prefix_trains_once():
    tree = PrefixTree([(0, 1, 2), (0, 2, 1)])
    assert tree.count() == 5  # (0), (0,1), (0,2), (0,1,2), (0,2,1)
    assert tree.count_without_sharing() == 6
    assert [n.prefix for n in tree.children(())] == [(0,)]
    assert [n.prefix for n in tree.children((0,))] == [(0, 1), (0, 2)]
    assert [n.prefix for n in tree.children([0, 1])] == [(0, 1, 2)]
    assert tree.children((0, 1, 2)) == []
    assert tree.children((1,)) == []


def test_stage_nodes_carry_parent_depth_and_lineage():
    tree = PrefixTree([(2, 0, 1), (1, 2, 0)])
    first = tree.stages[0]
    assert first == StageNode(prefix=(1,), parent=None, depth=1, slices=frozenset({1}))
    node = next(s for s in tree.stages if s.prefix == (2, 0, 1))
    assert node.parent == (2, 0)
    assert node.depth == 3
    assert node.slices == frozenset({0, 1, 2})
    with pytest.raises(AttributeError):
        node.depth = 1  # frozen


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 6), data=st.data())
def test_tree_invariants(n, data):
    b = data.draw(st.integers(1, min(math.factorial(n), 40)))
    orderings = random_orderings(n, b, seed=data.draw(st.integers(0, 1000)))
    tree = PrefixTree(orderings)
    expected = {o[:k] for o in orderings for k in range(1, n + 1)}
    assert {s.prefix for s in tree.stages} == expected
    assert tree.count() == len(expected) <= tree.count_without_sharing() == b * n
    seen: set[tuple[int, ...]] = set()
    keys = [(s.depth, s.prefix) for s in tree.stages]
    assert keys == sorted(keys)
    for s in tree.stages:
        assert s.depth == len(s.prefix)
        assert s.parent is None if s.depth == 1 else s.parent in seen
        assert s.slices == frozenset(s.prefix)
        seen.add(s.prefix)
    assert sum(len(tree.children(s.prefix)) for s in tree.stages) + len(tree.children(())) == len(
        tree.stages
    )
    assert tree.orderings == orderings


def test_training_cost_counts_sample_passes():
    one = PrefixTree(sisa_orderings(4))
    assert one.training_cost(100) == pytest.approx(100 * (4 + 1) / 2)  # 25+50+75+100
    assert one.training_cost(100, epochs=3) == pytest.approx(750)
    full = PrefixTree(full_orderings(3))
    # Shared: depths 3*1 + 6*2 + 6*3 = 33 stage-depths, each k*n/L.
    assert full.training_cost(30) == pytest.approx(33 * 30 / 3)
    assert full.training_cost(30, sharing=False) == pytest.approx(6 * 30 * (3 + 1) / 2)
    assert full.training_cost(30) < full.training_cost(30, sharing=False)


@pytest.mark.parametrize(
    ("orderings", "match"),
    [
        ([], "at least one"),
        ([(0, 1), (0, 2)], "permutation"),
        ([(0, 1, 2), (0, 1)], "permutation"),
        ([(0, 1), (0, 1)], "distinct"),
    ],
)
def test_invalid_orderings_raise(orderings, match):
    with pytest.raises(ValueError, match=match):
        PrefixTree(orderings)
