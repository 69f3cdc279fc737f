"""Partition: every sample in exactly one cell, seeded, balanced, groups kept whole."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3t.data.partition import partition


def ids_of(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def cell_sizes(mapping: dict[str, tuple[int, int]], n_shards: int, n_slices: int) -> list[int]:
    counts = Counter(mapping.values())
    return [counts[(m, s)] for m in range(n_shards) for s in range(n_slices)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    n_shards=st.integers(1, 6),
    n_slices=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_ungrouped_covers_all_and_balances_within_one(
    n: int, n_shards: int, n_slices: int, seed: int
) -> None:
    ids = ids_of(n)
    if n < n_shards * n_slices:
        with pytest.raises(ValueError, match="cannot fill"):
            partition(ids, [None] * n, n_shards, n_slices, seed)
        return
    out = partition(ids, [None] * n, n_shards, n_slices, seed)
    assert sorted(out) == sorted(ids)
    assert all(0 <= m < n_shards and 0 <= s < n_slices for m, s in out.values())
    sizes = cell_sizes(out, n_shards, n_slices)
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(
    group_of=st.lists(st.one_of(st.none(), st.integers(0, 15)), min_size=12, max_size=200),
    n_shards=st.integers(1, 3),
    n_slices=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_groups_never_split(
    group_of: list[int | None], n_shards: int, n_slices: int, seed: int
) -> None:
    ids = ids_of(len(group_of))
    groups = [None if g is None else f"user{g}" for g in group_of]
    out = partition(ids, groups, n_shards, n_slices, seed)
    assert sorted(out) == sorted(ids)
    cells: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for sid, g in zip(ids, groups, strict=True):
        if g is not None:
            cells[g].add(out[sid])
    assert all(len(c) == 1 for c in cells.values())
    # greedy placement: no cell exceeds the smallest by more than the largest unit
    largest = max(Counter(g for g in groups if g is not None).values(), default=1)
    sizes = cell_sizes(out, n_shards, n_slices)
    assert max(sizes) - min(sizes) <= max(largest, 1)


def test_deterministic_and_seed_sensitive() -> None:
    ids = ids_of(200)
    groups = [f"g{i % 13}" if i % 4 == 0 else None for i in range(200)]
    a = partition(ids, groups, 4, 3, seed=7)
    assert a == partition(ids, groups, 4, 3, seed=7)
    assert a != partition(ids, groups, 4, 3, seed=8)
    assert all(isinstance(m, int) and isinstance(s, int) for m, s in a.values())


def test_independent_of_input_order() -> None:
    ids = ids_of(120)
    groups = [f"g{i % 9}" if i % 2 else None for i in range(120)]
    a = partition(ids, groups, 3, 4, seed=1)
    b = partition(ids[::-1], groups[::-1], 3, 4, seed=1)
    assert a == b


def test_group_name_equal_to_an_id_is_not_confused() -> None:
    ids = ["a", "b", "c", "d"]
    groups = [None, "a", "a", None]  # group "a" and lone sample "a" are different units
    out = partition(ids, groups, 1, 3, seed=0)
    assert out["b"] == out["c"]
    assert sorted(Counter(out.values()).values()) == [1, 1, 2]


def test_big_groups_placed_first_in_separate_cells() -> None:
    ids = ids_of(12)
    groups = ["big1"] * 4 + ["big2"] * 4 + [None] * 4
    out = partition(ids, groups, 2, 1, seed=3)
    assert out["s0"] != out["s4"]  # the two big groups go to different shards
    assert cell_sizes(out, 2, 1) == [6, 6]


def test_single_cell() -> None:
    out = partition(["x", "y"], [None, "g"], 1, 1)
    assert out == {"x": (0, 0), "y": (0, 0)}


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((ids_of(10), [None] * 10, 0, 2), "n_shards >= 1"),
        ((ids_of(10), [None] * 10, 2, 0), "n_slices >= 1"),
        ((ids_of(5), [None] * 5, 2, 3), "5 samples cannot fill .* 6 cells"),
        ((ids_of(5), [None] * 4, 1, 1), "differ in length"),
        ((["a", "b", "a"], [None] * 3, 1, 1), "duplicate sample id 'a'"),
    ],
)
def test_validation(args: tuple, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        partition(*args)
