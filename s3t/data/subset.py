"""Seeded subsets of a :class:`Dataset` (the ``limit`` option of every loader).

Shared by the text and image loaders, so that a ``limit``/``seed`` pair picks the same kind
of subset whatever the source: class-proportional when labelled, sorted by id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from s3t.data.samples import Dataset


def limit_indices(data: Dataset, limit: int, seed: int) -> list[int]:
    """Seeded subset of ``limit`` indices, class-proportional when labelled, sorted by id."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    n = len(data)
    if limit >= n:
        chosen = list(range(n))
    elif data.labels is None:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(n, size=limit, replace=False).tolist()
    else:
        chosen = stratified(data.labels, limit, seed)
    return sorted(chosen, key=lambda i: data.ids[i])


def stratified(labels: Sequence[int], limit: int, seed: int) -> list[int]:
    """Largest-remainder allocation of ``limit`` over classes, then a seeded draw in each."""
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    classes = sorted(by_class)
    n = len(labels)
    exact = [limit * len(by_class[c]) / n for c in classes]
    quota = [math.floor(x) for x in exact]
    order = sorted(range(len(classes)), key=lambda k: (-(exact[k] - quota[k]), k))
    for k in order[: limit - sum(quota)]:
        quota[k] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, q in zip(classes, quota, strict=True):
        members = by_class[c]
        chosen.extend(members[j] for j in rng.choice(len(members), size=q, replace=False))
    return chosen
