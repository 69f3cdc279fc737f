"""Assign samples to cells (shard, slice): seeded, balanced, and never splitting a group.

Keeping a group (e.g. one user's records) in one cell means forgetting that user touches one
slice of one shard; balancing cell sizes keeps every stage's training cost alike.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def partition(
    ids: Sequence[str],
    groups: Sequence[str | None],
    n_shards: int,
    n_slices: int,
    seed: int = 0,
) -> dict[str, tuple[int, int]]:
    """Map each sample id to its ``(shard, slice)``.

    Units (a whole group, or one ungrouped sample) are shuffled with ``seed``, then placed
    largest first, each into the currently smallest cell (ties: lowest cell index). Units are
    put in a canonical order before shuffling, so the result depends on the samples and their
    groups, not on the order they are listed in.
    """
    if n_shards < 1 or n_slices < 1:
        raise ValueError(f"need n_shards >= 1 and n_slices >= 1, got {n_shards} and {n_slices}")
    if len(groups) != len(ids):
        raise ValueError(f"ids and groups differ in length ({len(ids)} vs {len(groups)})")
    n_cells = n_shards * n_slices
    if len(ids) < n_cells:
        raise ValueError(
            f"{len(ids)} samples cannot fill {n_shards} shards x {n_slices} slices = {n_cells} "
            "cells; use fewer shards or slices, or more data"
        )

    units: dict[tuple[int, str], list[str]] = {}
    seen: set[str] = set()
    for sid, group in zip(ids, groups, strict=True):
        if sid in seen:
            raise ValueError(f"duplicate sample id {sid!r}: every sample needs a unique id")
        seen.add(sid)
        key = (0, group) if group is not None else (1, sid)
        units.setdefault(key, []).append(sid)

    keys = sorted(units)
    shuffled = [keys[k] for k in np.random.default_rng(seed).permutation(len(keys))]
    shuffled.sort(key=lambda k: -len(units[k]))  # stable: equal sizes keep the seeded order

    heap = [(0, cell) for cell in range(n_cells)]  # (size, cell index): smallest cell first
    out: dict[str, tuple[int, int]] = {}
    for key in shuffled:
        size, cell = heapq.heappop(heap)
        members = units[key]
        where = (cell // n_slices, cell % n_slices)
        for sid in members:
            out[sid] = where
        heapq.heappush(heap, (size + len(members), cell))
    return out
