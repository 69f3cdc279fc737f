"""Closed forms for deletion rate, retention and stage counts, to check plans without training.

Model (PAPER.md): ``m`` shards of ``L`` slices, every shard trains the same orderings; each
deletion request hits cell (shard, slice) with probability ``prior[slice] / m``
(uniform prior: ``1 / (m L)``), independently. A shard dies when the first slice of every
ordering has been hit; the system must retrain when every shard is dead.

Derivations
-----------
*Deletion rate.* Only the first-slice cells matter for death: with ``d`` distinct first
slices per shard there are ``m d`` such cells, each hit with probability ``1/(mL)`` per
request under a uniform prior. Collecting all of them is a coupon collector observed
through draws that hit the set with probability ``d/L``, so
``E[requests] = (L/d) * m d H_{md} = m L H_{md}`` -- exact, and with ``d = min(B, L)`` for
cyclic or BMS orderings this is the paper's ``m L H_{mB'}`` (SISA: ``d = 1``).
For any prior, Poissonise (requests arrive at rate 1; by Wald's identity the expected
continuous time equals the expected number of requests; cells become independent):
``E[N_retrain] = int_0^inf 1 - prod_j (1 - exp(-p_j x / m))^m dx`` and, since shards are
independent after Poissonisation,
``E[N_first_death] = int_0^inf (1 - prod_j (1 - exp(-p_j x / m)))^m dx`` (``j`` over the
distinct first slices). Both are exact.

*Retention.* With ``r`` deletions into one shard let ``D`` be the set of slices hit. The
shard serves a prefix of length ``>= k`` iff some ordering's first-``k`` slice *set* ``A``
misses ``D``. For SISA (one ordering) that is ``P = (1 - k/L)^r`` exactly. The paper's
``P = 1 - (1 - (1 - k/L)^r)^{B'}``, ``B' = min(B, L!/(L-k)!)``, treats the ``B'`` events
"``A_i`` misses ``D``" as independent. They are not: they are driven by the same ``r``
deletions, and different orderings may share slices. ``retention_exact`` computes the true
value from the exact distribution of ``D``; see ``retention_s3t`` for where they agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from s3t.plan.orderings import Prior, check_n_slices, check_orderings, check_prior

Ordering = tuple[int, ...]

# Exact retention enumerates all 2^L hit sets.
MAX_EXACT_SLICES = 20


def harmonic(n: int) -> float:
    """The n-th harmonic number ``H_n = 1 + 1/2 + ... + 1/n`` (``H_0 = 0``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return float(sum(1.0 / i for i in range(1, n + 1)))


def deletion_rate_s3t(m: int, n_slices: int, b_prime: int) -> float:
    """Expected requests until retraining: ``m L H_{m B'}`` (uniform prior, exact).

    ``b_prime`` is the number of distinct first slices per shard (``min(B, L)`` for cyclic
    and BMS orderings; use ``distinct_first_slices`` for arbitrary orderings).
    """
    if m < 1 or n_slices < 1 or not 1 <= b_prime <= n_slices:
        raise ValueError(
            f"need m >= 1, n_slices >= 1 and b_prime in [1, n_slices]; "
            f"got m={m}, n_slices={n_slices}, b_prime={b_prime}"
        )
    return m * n_slices * harmonic(m * b_prime)


def deletion_rate_sisa(m: int, n_slices: int) -> float:
    """The paper's SISA rate ``m L H_m``: a shard keeps serving the checkpoint before its
    first hit slice, so it dies when its first slice is hit (the same as S3T with B = 1)."""
    return deletion_rate_s3t(m, n_slices, 1)


def deletion_rate_shard_out(m: int) -> float:
    """Expected requests until every shard was hit once, ``m H_m``: the rate when any hit
    takes a shard out of service (this project's SISA baseline; full fine-tuning, m = 1)."""
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    return m * harmonic(m)


def distinct_first_slices(orderings: Sequence[Sequence[int]]) -> int:
    """Number of distinct first slices: only these decide when a shard dies."""
    return len(first_slices(orderings))


def first_slices(orderings: Sequence[Sequence[int]]) -> list[int]:
    """Sorted distinct first slices of the orderings."""
    check_orderings(orderings)
    return sorted({int(o[0]) for o in orderings})


def stages_full(n_slices: int) -> int:
    """Distinct stages of the full budget with prefix sharing: ``sum_k L!/(L-k)!``."""
    n = check_n_slices(n_slices)
    return sum(math.factorial(n) // math.factorial(n - k) for k in range(1, n + 1))


def _first_slice_probs(
    orderings: Sequence[Sequence[int]], prior: Prior | None
) -> tuple[int, np.ndarray, bool]:
    n_slices = check_orderings(orderings)
    p = check_prior(prior, n_slices)
    first = first_slices(orderings)
    return n_slices, p[first], prior is None or bool(np.allclose(p, 1.0 / n_slices, atol=1e-12))


def _check_shards(n_shards: int) -> int:
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise ValueError(f"n_shards must be an integer >= 1, got {n_shards!r}")
    return int(n_shards)


def deletion_rate(
    n_shards: int, orderings: Sequence[Sequence[int]], prior: Prior | None = None
) -> float:
    """Exact expected requests until the system must retrain (any prior).

    Uniform prior: ``m L H_{m d}``. Otherwise the Poissonised integral in the module doc;
    ``inf`` if some first slice can never be deleted (that shard never dies).
    """
    m = _check_shards(n_shards)
    n_slices, q, uniform = _first_slice_probs(orderings, prior)
    if uniform:
        return deletion_rate_s3t(m, n_slices, len(q))
    if np.any(q <= 0):
        return math.inf

    def tail(x: float) -> float:
        return float(-np.expm1(m * np.sum(np.log1p(-np.exp(-q * x / m)))))

    return _integrate_tail(tail, scale=m / q.min())


def first_shard_death(
    n_shards: int, orderings: Sequence[Sequence[int]], prior: Prior | None = None
) -> float:
    """Exact expected requests until the first shard dies (any prior, Poissonised integral)."""
    m = _check_shards(n_shards)
    _, q, _ = _first_slice_probs(orderings, prior)
    if np.any(q <= 0):
        return math.inf

    def tail(x: float) -> float:
        shard_dead = float(np.exp(np.sum(np.log1p(-np.exp(-q * x / m)))))
        return (1.0 - shard_dead) ** m

    return _integrate_tail(tail, scale=m / q.min())


def _integrate_tail(tail: Callable[[float], float], scale: float) -> float:
    """``int_0^inf tail(x) dx`` for a survival function decaying on the given scale."""
    total = 0.0
    lo, width = 0.0, scale
    while True:
        from scipy import integrate  # loaded on first use: keeps `import s3t` light

        part, _ = integrate.quad(tail, lo, lo + width, limit=200, epsabs=1e-10, epsrel=1e-10)
        total += part
        lo += width
        if tail(lo) < 1e-14:
            return total
        width *= 2


def retention_sisa(n_slices: int, k: int, r: int) -> float:
    """``P[F_r(SISA) >= F(k)] = (1 - k/L)^r``: exact for uniform deletions into a shard."""
    n = check_n_slices(n_slices)
    _check_kr(n, k, r)
    return (1.0 - k / n) ** r


def retention_s3t(n_slices: int, k: int, r: int, budget: int) -> float:
    """The paper's ``1 - (1 - (1 - k/L)^r)^{B'}`` with ``B' = min(B, L!/(L-k)!)``.

    This is an *independence approximation*, not the exact probability
    (``retention_exact`` is; both checked against simulation in the tests). Let ``A_i`` be
    the distinct first-``k`` slice sets and ``a = (1 - k/L)^r``. Then:

    * Exact when ``B' = 1`` (it is then the SISA formula), for ``k = 0`` or ``r = 0``
      (both 1) and for ``k = L``, ``r >= 1`` (both 0).
    * ``k = 1`` with ``d`` distinct first slices (cyclic/BMS: ``d = min(B, L) = B'``): the
      exact value is ``1 - sum_j (-1)^j C(d,j) (1 - j/L)^r`` (1 when ``r < d``) and the
      formula is a strict *lower bound* for ``d >= 2``, ``r >= 1``: multinomial hit counts
      are negatively associated, so P[all d slices hit] < a product of marginals. The same
      holds for any family of pairwise disjoint ``A_i``.
    * Two sets of size ``k`` overlapping in ``o`` slices: exact ``2a - (1-(2k-o)/L)^r``
      against the formula's ``2a - a^2``. The formula *overestimates* when ``o > k^2/L``
      (e.g. cyclic L=6, B=2, k=2 or 3), underestimates when ``o < k^2/L`` and is exact when
      ``o = k^2/L`` (cyclic L=4, B=2, k=2), for every ``r >= 1``.
    * ``B'`` counts ordered prefixes, but orderings whose first ``k`` slices form the same
      set are the same event; the full budget has only ``C(L,k)`` sets and the exact value
      is ``P[|D| <= L-k]``. There the formula is below the truth for small ``r`` and above
      it for larger ``r`` (L=4, k=2: r=2 gives 1 vs 0.968, r=5 gives 0.180 vs 0.317).
    * Cyclic L=4, B=4, k=3: surviving needs all ``r`` deletions in one slice, so the exact
      value is ``4^(1-r)``, above the formula for every ``r >= 1`` (0.25 vs 0.228 at r=2).

    So for ``k = 1`` (whether a shard is still alive) the formula is conservative; for deeper
    prefixes it can err either way, badly for the full budget (L=5, k=4, r=5: exact 0.0016,
    formula 0.038).
    """
    n = check_n_slices(n_slices)
    _check_kr(n, k, r)
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    b_prime = min(budget, math.factorial(n) // math.factorial(n - k))
    return 1.0 - (1.0 - (1.0 - k / n) ** r) ** b_prime


def _check_kr(n: int, k: int, r: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] (0..n_slices), got {k}")
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")


def hit_set_distribution(prior: Prior, r: int) -> np.ndarray:
    """``P[D = S]`` for every set ``S`` of slices (bitmask index) after ``r`` deletions.

    ``P[D subset S] = p(S)^r``; Moebius inversion over subsets gives ``P[D = S]``.
    """
    p = np.asarray(prior, dtype=float)
    n = p.shape[0]
    if n > MAX_EXACT_SLICES:
        raise ValueError(f"n_slices must be <= {MAX_EXACT_SLICES} for exact retention, got {n}")
    masks = np.arange(1 << n)
    bits = (masks[:, None] >> np.arange(n)[None, :]) & 1
    f = np.clip(bits @ p, 0.0, 1.0) ** r
    for i in range(n):
        view = f.reshape(-1, 2, 1 << i)
        view[:, 1, :] -= view[:, 0, :]
    return f


def retention_exact(
    orderings: Sequence[Sequence[int]], r: int, prior: Prior | None = None
) -> np.ndarray:
    """Exact ``P[served prefix >= k]`` for ``k = 0..L`` after ``r`` deletions into a shard.

    Sums ``P[D = S]`` over hit sets ``S`` that miss some ordering's first-``k`` slice set.
    """
    n = check_orderings(orderings)
    p = check_prior(prior, n)
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    dist = hit_set_distribution(p, r)
    masks = np.arange(1 << n)
    out = np.empty(n + 1)
    out[0] = 1.0
    for k in range(1, n + 1):
        sets = {sum(1 << int(s) for s in o[:k]) for o in orderings}
        ok = np.zeros(masks.shape[0], dtype=bool)
        for a in sets:
            ok |= (masks & a) == 0
        out[k] = float(np.clip(dist[ok].sum(), 0.0, 1.0))
    return out


def expected_prefix_length(
    n_shards: int,
    orderings: Sequence[Sequence[int]],
    r: int,
    prior: Prior | None = None,
) -> float:
    """Exact mean served prefix length (slices, averaged over shards) after ``r`` requests.

    Each shard receives ``Binomial(r, 1/m)`` of the requests, distributed over its slices by
    the prior; ``E[prefix] = sum_k P[prefix >= k]``.
    """
    m = _check_shards(n_shards)
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    from scipy.stats import binom

    weights = binom.pmf(np.arange(r + 1), r, 1.0 / m)
    total = 0.0
    for j, w in enumerate(weights):
        if w < 1e-15:
            continue
        total += w * float(retention_exact(orderings, j, prior)[1:].sum())
    return total
