"""Placement by deletion likelihood: which cell each unit of data goes to (pure, no torch).

A *unit* is a whole group (e.g. one user's samples, which always share one cell) or one
ungrouped sample; its *prior* is how likely a deletion request names it (any relative rate
>= 0; 0 for data that is never deletable). ``place_units(rule="prior")`` sorts the units by
prior and cuts the sorted list into ``L`` bands of about equal size: band ``j`` fills slice
``j`` of every shard, so never-deleted and rarely deleted data sit in slice 0 and the likely
deleted data in slice ``L-1`` of every shard. Within a band, units go largest first into the
smallest of its ``m`` cells, so cells stay balanced. ``slice_prior`` gives the deletion mass
of each slice, which the ``bms`` orderings use to put the hot slice late in every ordering.

Two effects cut the stages a deletion invalidates: hot data sits late in the orderings
(fewer stages contain it), and it is concentrated in few cells, so a second deletion there
often hits a cell that is already invalid and costs nothing more. Placement is decided once,
at training, and recorded: it changes where samples are, never what a stage trains on.

``place_units(rule="uniform")`` is the seeded, balanced placement of ``s3t.data.partition``
(the same algorithm on units, so the simulator compares against what training does).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

PLACEMENTS = ("uniform", "prior")


def _check(sizes: Sequence[int], n_shards: int, n_slices: int) -> None:
    if n_shards < 1 or n_slices < 1:
        raise ValueError(f"need n_shards >= 1 and n_slices >= 1, got {n_shards} and {n_slices}")
    if any(int(s) < 1 for s in sizes):
        raise ValueError("every unit needs at least one sample")
    if len(sizes) < n_shards * n_slices:
        raise ValueError(
            f"{len(sizes)} units (groups or ungrouped samples) cannot fill {n_shards} shards x "
            f"{n_slices} slices = {n_shards * n_slices} cells; use fewer shards or slices, or "
            "more data")


def _fill(units: Sequence[int], sizes: Sequence[int], cells: Sequence[int],
          out: list[tuple[int, int]], n_slices: int) -> None:
    """Largest unit first into the currently smallest cell (ties: lowest cell index)."""
    heap = [(0, cell) for cell in cells]
    heapq.heapify(heap)
    for u in sorted(units, key=lambda k: -int(sizes[k])):  # stable: keeps the given order
        size, cell = heapq.heappop(heap)
        out[u] = (cell // n_slices, cell % n_slices)
        heapq.heappush(heap, (size + int(sizes[u]), cell))


def place_units(sizes: Sequence[int], priors: Sequence[float] | np.ndarray | None,
                n_shards: int, n_slices: int, seed: int = 0,
                rule: str = "prior") -> list[tuple[int, int]]:
    """The ``(shard, slice)`` of each unit, given in a canonical order (callers sort them).

    ``uniform``: units shuffled with ``seed``, placed largest first into the smallest cell.
    ``prior``: units shuffled with ``seed`` (so ties keep a random, label-mixing order), sorted
    by prior, cut into ``n_slices`` bands of about equal sample count; band ``j`` is spread
    over the cells ``(shard, j)`` like ``uniform``.
    """
    if rule not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {rule!r}")
    _check(sizes, n_shards, n_slices)
    n = len(sizes)
    order = [int(k) for k in np.random.default_rng(seed).permutation(n)]
    out: list[tuple[int, int]] = [(0, 0)] * n
    if rule == "uniform":
        _fill(order, sizes, range(n_shards * n_slices), out, n_slices)
        return out
    p = np.asarray(priors, dtype=float)
    if p.shape != (n,) or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("priors must be one finite number >= 0 per unit")
    order.sort(key=lambda k: p[k])  # stable: equal priors keep the seeded order
    total = float(sum(int(s) for s in sizes))
    bands: list[list[int]] = [[] for _ in range(n_slices)]
    done = 0.0
    for u in order:
        size = int(sizes[u])
        bands[min(n_slices - 1, int(n_slices * (done + size / 2) / total))].append(u)
        done += size
    for j, band in enumerate(bands):
        if len(band) < n_shards:
            raise ValueError(
                f"placement by prior: slice {j} gets {len(band)} units for {n_shards} shards "
                "(groups too large for the bands); use fewer shards or slices, or placement "
                "uniform")
        _fill(band, sizes, [s * n_slices + j for s in range(n_shards)], out, n_slices)
    return out


def slice_prior(cells: Sequence[tuple[int, int]], priors: Sequence[float] | np.ndarray,
                n_slices: int) -> list[float]:
    """Deletion mass of each slice index over all shards (unit priors summed), normalised;
    uniform when no unit can be deleted. It is what ``bms`` orders the slices by."""
    mass = np.zeros(n_slices)
    for (_, sl), pr in zip(cells, priors, strict=True):
        mass[sl] += float(pr)
    if mass.sum() <= 0:
        return [1.0 / n_slices] * n_slices
    return [float(x) for x in mass / mass.sum()]


def place_samples(ids: Sequence[str], groups: Sequence[str | None],
                  priors: Sequence[float | None] | None, deletable: Sequence[bool] | None,
                  n_shards: int, n_slices: int, seed: int = 0
                  ) -> tuple[dict[str, tuple[int, int]], list[float]]:
    """Placement by prior of samples: each id's ``(shard, slice)`` and the slice prior.

    Units as in ``s3t.data.partition`` (a group, or an ungrouped sample; canonical order). A
    unit whose samples are all ``deletable=False`` has prior 0; otherwise the largest prior
    given on its deletable samples (a group's rate may be repeated on each row), or, where
    none is, the mean of the priors given (1 when the data gives none).
    """
    if priors is None and deletable is None:
        raise ValueError("placement 'prior' needs a deletion_prior column or deletable flags "
                         "in the data (or use placement uniform)")
    n = len(ids)
    given = [float(p) for p in (priors or []) if p is not None]
    fill = sum(given) / len(given) if given else 1.0
    units: dict[tuple[int, str], list[int]] = {}
    for i, (sid, group) in enumerate(zip(ids, groups, strict=True)):
        units.setdefault((0, group) if group is not None else (1, sid), []).append(i)
    keys = sorted(units)
    unit_priors: list[float] = []
    for key in keys:
        members = [i for i in units[key] if deletable is None or deletable[i]]
        values = [float(v) for v in (priors[i] for i in members if priors is not None)
                  if v is not None]
        unit_priors.append(0.0 if not members else max(values) if values else fill)
    sizes = [len(units[k]) for k in keys]
    cells = place_units(sizes, unit_priors, n_shards, n_slices, seed, "prior")
    out = {ids[i]: cells[u] for u, key in enumerate(keys) for i in units[key]}
    if len(out) != n:
        raise ValueError("duplicate sample ids: every sample needs a unique id")
    return out, slice_prior(cells, unit_priors, n_slices)


def zipf_weights(n_units: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Deletion likelihood of ``n_units`` users: Zipf ``rank^-exponent`` over a random
    ranking (``exponent`` 0 is uniform), normalised to sum to 1."""
    if n_units < 1 or not np.isfinite(exponent) or exponent < 0:
        raise ValueError(f"need n_units >= 1 and a finite exponent >= 0, got {n_units}, "
                         f"{exponent}")
    w = np.arange(1, n_units + 1, dtype=float) ** -float(exponent)
    return rng.permutation(w / w.sum())


def parse_skew(text: str) -> float:
    """``uniform`` -> 0.0; ``zipf:S`` -> S (> 0). Raises ``ValueError`` naming the form."""
    if text == "uniform":
        return 0.0
    kind, _, value = text.partition(":")
    try:
        exponent = float(value)
    except ValueError:
        exponent = float("nan")
    if kind != "zipf" or not np.isfinite(exponent) or exponent <= 0:
        raise ValueError(f"skew must be 'uniform' or 'zipf:S' with S > 0 (e.g. zipf:1.1), "
                         f"got {text!r}")
    return exponent
