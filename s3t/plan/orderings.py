"""Slice orderings per shard: which permutations of the slices each shard trains.

A shard keeps serving after a deletion through the ordering with the longest prefix of
undeleted slices, so the choice of orderings decides how many deletions are absorbed
before retraining. Slices are 0-based integers ``0..L-1``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np

STRATEGIES = ("cyclic", "bms", "random", "full", "sisa")

Ordering = tuple[int, ...]
#: A deletion prior: one probability per slice, as a sequence or a 1-D array.
Prior = Sequence[float] | np.ndarray

# Above this many permutations we never enumerate all of them.
_ENUMERATE_LIMIT = 40320  # 8!


def check_n_slices(n_slices: int) -> int:
    """Validate the number of slices per shard (L >= 1)."""
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)):
        raise ValueError(f"n_slices must be an integer >= 1, got {n_slices!r}")
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    return int(n_slices)


def default_budget(strategy: str, slices: int) -> int:
    """The budget a strategy implies when none is given: 1 for sisa, L! for full, else L
    (one rotation per slice, which already gives every slice a turn first)."""
    if strategy == "sisa":
        return 1
    if strategy == "full":
        return math.factorial(slices)
    return slices


def check_budget(budget: int, n_slices: int) -> int:
    """Validate a budget of orderings: between 1 and L! (there are no more distinct ones)."""
    n_slices = check_n_slices(n_slices)
    top = math.factorial(n_slices)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be an integer in [1, {top}], got {budget!r}")
    if not 1 <= budget <= top:
        raise ValueError(
            f"budget must be in [1, {top}] (n_slices! for n_slices={n_slices}), got {budget}"
        )
    return int(budget)


def check_prior(prior: Prior | None, n_slices: int) -> np.ndarray:
    """Validate a deletion prior (one probability per slice); ``None`` means uniform."""
    n_slices = check_n_slices(n_slices)
    if prior is None:
        return np.full(n_slices, 1.0 / n_slices)
    p = np.asarray(prior, dtype=float)
    if p.ndim != 1 or p.shape[0] != n_slices:
        raise ValueError(
            f"prior must have one probability per slice (length {n_slices}), "
            f"got length {p.size}"
        )
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"prior entries must be finite and in [0, 1], got {p.tolist()}")
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"prior must sum to 1 (within 1e-6), got sum {p.sum():.9g}")
    return p


def check_orderings(orderings: Sequence[Sequence[int]], n_slices: int | None = None) -> int:
    """Validate orderings as permutations of ``0..L-1``; return L (inferred when not given)."""
    if len(orderings) == 0:
        raise ValueError("orderings must contain at least one ordering, got none")
    if n_slices is None:
        n_slices = len(orderings[0])
    n_slices = check_n_slices(n_slices)
    expected = list(range(n_slices))
    for o in orderings:
        if sorted(int(s) for s in o) != expected:
            raise ValueError(
                f"every ordering must be a permutation of 0..{n_slices - 1}, got {tuple(o)}"
            )
    return n_slices


def _check_t(t: float) -> float:
    if not (isinstance(t, (int, float, np.floating)) and math.isfinite(t) and t > 0):
        raise ValueError(f"t must be a finite number > 0, got {t!r}")
    return float(t)


def prefix_score(ordering: Sequence[int], prior: Prior, t: float = 100.0) -> float:
    """BMS score ``sum_i i * (1 - sum_{j<=i} p_sigma(j))^t`` (1-based ``i``).

    Long prefixes of rarely deleted slices score high, so high-prior slices drift to the end.
    """
    p = np.asarray(prior, dtype=float)
    cum = np.cumsum(p[list(ordering)])
    survive = np.clip(1.0 - cum, 0.0, None)
    return float(np.sum(np.arange(1, len(cum) + 1) * survive**t))


# --------------------------------------------------------------------------- cyclic


def _cyclic_stream(n_slices: int) -> Iterator[Ordering]:
    """All L! permutations: first the L rotations, then suffix rotations behind fixed prefixes.

    Level ``j`` fixes the first ``j`` slices of every ordering produced so far and rotates
    the rest by each non-zero amount. After level ``j`` every ordered ``(j+1)``-prefix occurs
    exactly once, so the stream is duplicate-free and ends with all ``L!`` permutations.
    """
    base = tuple(range(n_slices))
    produced: list[Ordering] = [base[i:] + base[:i] for i in range(n_slices)]
    yield from produced
    for fixed in range(1, n_slices - 1):
        parents = list(produced)
        tail_len = n_slices - fixed
        for shift in range(1, tail_len):
            for parent in parents:
                head, tail = parent[:fixed], parent[fixed:]
                child = head + tail[shift:] + tail[:shift]
                produced.append(child)
                yield child


def cyclic_orderings(n_slices: int, budget: int) -> list[Ordering]:
    """Cyclic rotations of ``(0..L-1)``; for B > L, suffix rotations behind fixed prefixes.

    For B <= L the orderings form (part of) a Latin square: every slice appears at most once
    per position, which maximises the pairwise positional distance for a uniform prior.
    """
    n_slices = check_n_slices(n_slices)
    budget = check_budget(budget, n_slices)
    return list(itertools.islice(_cyclic_stream(n_slices), budget))


# --------------------------------------------------------------------------- BMS


def _bms_latin(p: np.ndarray, t: float) -> list[Ordering]:
    """L orderings built position by position with one assignment problem per position."""
    n = p.shape[0]
    partial: list[list[int]] = [[] for _ in range(n)]
    mass = np.zeros(n)  # deleted-probability mass of each partial ordering's prefix
    from scipy.optimize import linear_sum_assignment  # scipy loads only for bms

    forbidden = -1e9  # far below any achievable gain (gains are <= L)
    for pos in range(n):
        gain = (pos + 1) * np.clip(1.0 - mass[:, None] - p[None, :], 0.0, None) ** t
        for a, seq in enumerate(partial):
            gain[a, seq] = forbidden
        rows, cols = linear_sum_assignment(gain, maximize=True)
        if np.any(gain[rows, cols] == forbidden):  # pragma: no cover - Hall's theorem
            raise RuntimeError("BMS assignment failed: no slice-disjoint extension")
        for a, j in zip(rows, cols, strict=True):
            partial[a].append(int(j))
            mass[a] += p[j]
    return [tuple(seq) for seq in partial]


def _weighted_permutation(rng: np.random.Generator, weights: np.ndarray) -> Ordering:
    remaining = list(range(weights.shape[0]))
    out: list[int] = []
    while remaining:
        w = weights[remaining]
        total = w.sum()
        probs = w / total if total > 0 else np.full(len(remaining), 1.0 / len(remaining))
        k = int(rng.choice(len(remaining), p=probs))
        out.append(remaining.pop(k))
    return tuple(out)


def bms_orderings(
    prior: Prior, budget: int, t: float = 100.0, seed: int = 0
) -> list[Ordering]:
    """Bipartite-matching selection for a known deletion prior.

    Builds L orderings (a Latin square) by solving, at each position, an assignment between
    the partial orderings and the unused slices that maximises the extended prefix scores.
    B < L keeps the B best-scoring; B > L adds distinct orderings sampled slice by slice with
    weights proportional to ``1 - p`` (seeded), so rarely deleted slices tend to come first.

    The score rates each ordering on its own while a shard serves the best of its orderings,
    so BMS can repeat prefix *sets* (e.g. {2,3} twice for p = 0.1,0.4,0.4,0.1) and, at
    B = L, keep slightly shorter served prefixes than the cyclic square for some priors.
    """
    if prior is None:
        raise ValueError("prior must be given for bms (use make_orderings for a uniform default)")
    n = len(prior)
    p = check_prior(prior, n)
    budget = check_budget(budget, n)
    t = _check_t(t)
    latin = _bms_latin(p, t)
    latin.sort(key=lambda o: (-prefix_score(o, p, t), o))
    if budget <= n:
        return latin[:budget]
    chosen = list(latin)
    seen = set(chosen)
    rng = np.random.default_rng(seed)
    weights = 1.0 - p
    attempts = 0
    max_attempts = 50 * budget + 1000
    while len(chosen) < budget and attempts < max_attempts:
        attempts += 1
        cand = _weighted_permutation(rng, weights)
        if cand not in seen:
            seen.add(cand)
            chosen.append(cand)
    if len(chosen) < budget:
        # Sampling stalls when few unseen orderings remain or weights vanish: fill up with
        # the best-scoring unseen orderings (small L) or in lexicographic order.
        rest: Iterator[Ordering] = (o for o in itertools.permutations(range(n)) if o not in seen)
        if math.factorial(n) <= _ENUMERATE_LIMIT:
            rest = iter(sorted(rest, key=lambda o: (-prefix_score(o, p, t), o)))
        chosen.extend(itertools.islice(rest, budget - len(chosen)))
    return chosen


# --------------------------------------------------------------------------- others


def random_orderings(n_slices: int, budget: int, seed: int = 0) -> list[Ordering]:
    """B distinct uniformly random permutations (seeded); a baseline without structure."""
    n_slices = check_n_slices(n_slices)
    budget = check_budget(budget, n_slices)
    rng = np.random.default_rng(seed)
    if math.factorial(n_slices) <= _ENUMERATE_LIMIT:
        # A prefix of one seeded shuffle: a larger budget extends a smaller one.
        every = list(itertools.permutations(range(n_slices)))
        picks = rng.permutation(len(every))[:budget]
        return [every[int(i)] for i in picks]
    chosen: list[Ordering] = []
    seen: set[Ordering] = set()
    while len(chosen) < budget:
        cand = tuple(int(x) for x in rng.permutation(n_slices))
        if cand not in seen:
            seen.add(cand)
            chosen.append(cand)
    return chosen


def full_orderings(n_slices: int) -> list[Ordering]:
    """All L! orderings in lexicographic order: the most deletion-tolerant, the costliest."""
    n_slices = check_n_slices(n_slices)
    return list(itertools.permutations(range(n_slices)))


def sisa_orderings(n_slices: int) -> list[Ordering]:
    """The identity ordering only: SISA with slice checkpoints, the baseline S3T improves on."""
    n_slices = check_n_slices(n_slices)
    return [tuple(range(n_slices))]


def make_orderings(
    strategy: str,
    n_slices: int,
    budget: int,
    prior: Prior | None = None,
    t: float = 100.0,
    seed: int = 0,
) -> list[Ordering]:
    """Orderings for one shard by strategy name (one of ``STRATEGIES``).

    ``prior`` is used by ``bms`` (uniform when omitted) and validated for every strategy.
    ``sisa`` requires ``budget == 1`` and ``full`` requires ``budget == L!``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    n_slices = check_n_slices(n_slices)
    p = check_prior(prior, n_slices)
    if strategy == "sisa":
        if budget != 1:
            raise ValueError(f"budget must be 1 for strategy 'sisa', got {budget}")
        return sisa_orderings(n_slices)
    if strategy == "full":
        top = math.factorial(n_slices)
        if budget != top:
            raise ValueError(
                f"budget must be n_slices! = {top} for strategy 'full' "
                f"(n_slices={n_slices}), got {budget}"
            )
        return full_orderings(n_slices)
    budget = check_budget(budget, n_slices)
    if strategy == "cyclic":
        return cyclic_orderings(n_slices, budget)
    if strategy == "bms":
        return bms_orderings(p, budget, t=t, seed=seed)
    return random_orderings(n_slices, budget, seed=seed)
