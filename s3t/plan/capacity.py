"""Capacity under a deletion stream: a queueing model of eager retraining (pure, no torch).

Deletions arrive as a Poisson process of ``rate`` per second, each in a shard chosen
uniformly and a slice by the slice prior. A shard at full depth is *up*; a hit at slice
``s`` drops it to depth ``d(s)`` (the longest prefix of its orderings before ``s``) and it
needs its *primary chain* rebuilt: stages of depth ``d+1..L``, a depth-``q`` stage taking
``x_q = q * cell_seconds + stage_overhead``. One trainer rebuilds primary chains first
(``s3t.train.scheduler``), so the shards form a machine-repairman queue (finite source,
one server): with ``a = lambda * E[S]`` (``lambda = rate / m`` per shard, ``S`` a primary
rebuild) the trainer is idle with ``P0 = 1 / sum_k m!/(m-k)! a^k`` and a shard is up a
fraction ``U = (1 - P0) / (m a)`` of the time (exact for exponential repairs, close for
others). A hit while a stage trains on its slice cancels it: a stage of length ``x`` hit at
rate ``h`` takes ``(exp(h x) - 1) / h`` in expectation. Fallback stages (other orderings)
take the trainer only when no primary work waits; when they cannot keep up
(``rate * E[fallback work] >= 1 - busy``) a shard keeps only its primary chain, and the
model switches to one ordering. While down, the served depth climbs from ``d`` as the chain
is rebuilt; its time average gives the served depth fraction (the accuracy-loss proxy).

``s3t.plan.stream_sim`` simulates the same process event by event; tests hold the two
within 15% of each other on small plans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from s3t.plan.prefix_tree import PrefixTree

DAY = 86400.0


@dataclass
class Prediction:
    """Time averages predicted for one plan under one deletion stream."""

    capacity: float               # fraction of shards at full depth
    served_depth_fraction: float  # mean served depth / L (accuracy-loss proxy)
    trainer_busy: float           # fraction of time the trainer trains
    retrain_seconds_per_day: float
    rebuild_seconds: float        # mean time to restore a hit shard's full depth, no queue
    keeps_up: bool                # fallback orderings are rebuilt between deletions

    def to_dict(self) -> dict:
        return asdict(self)


def _restart(x: float, h: float) -> float:
    """Mean time to finish ``x`` seconds of work restarted by hits of rate ``h``."""
    return x if h * x < 1e-9 else math.expm1(min(h * x, 700.0)) / h


def _per_hit_set(orderings: list[tuple[int, ...]], cell: float, overhead: float,
                 lam: float, p: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every set of hit slices (bitmask) of a whole shard: served depth, primary rebuild
    time (with restarts), depth-seconds lost during the rebuild, fallback work."""
    n = len(orderings[0])
    stages = PrefixTree(orderings).stages
    size = 1 << n
    depth, rebuild, lost, fallback = (np.zeros(size) for _ in range(4))
    for hit in range(1, size):
        best, chain = -1, orderings[0]
        for o in orderings:
            k = 0
            while k < n and not hit >> o[k] & 1:
                k += 1
            if k > best:
                best, chain = k, o
        depth[hit] = best
        primary = 0.0
        for q in range(best + 1, n + 1):
            x = q * cell + overhead
            primary += x
            t = _restart(x, lam * float(p[list(chain[:q])].sum()))
            rebuild[hit] += t
            lost[hit] += (n - q + 1) * t
        total = sum(st.depth * cell + overhead for st in stages
                    if any(hit >> s & 1 for s in st.slices))
        fallback[hit] = max(0.0, total - primary)
    return depth, rebuild, lost, fallback


class _HitSets:
    """Distribution of the set of slices hit by ``1 + Poisson(mean_extra)`` deletions, with
    the exact ``k``-deletion distributions (``theory.hit_set_distribution``) kept."""

    def __init__(self, p: np.ndarray) -> None:
        self.p = p
        self.by_count: list[np.ndarray] = []

    def __call__(self, mean_extra: float) -> np.ndarray:
        from s3t.plan.theory import hit_set_distribution

        top = 0
        if mean_extra > 0:  # Poisson tail below 1e-9
            top = int(mean_extra + 10 * math.sqrt(mean_extra) + 10)
        while len(self.by_count) <= top:
            self.by_count.append(hit_set_distribution(self.p, len(self.by_count) + 1))
        k = np.arange(top + 1)
        log_w = k * math.log(mean_extra) - mean_extra - np.array(
            [math.lgamma(i + 1) for i in k]) if mean_extra > 0 else np.zeros(1)
        w = np.exp(log_w)
        out = np.tensordot(w, np.array(self.by_count[:top + 1]), axes=1)
        return out / out.sum()


def _repairman(m: int, a: float) -> float:
    """Idle probability ``P0`` of a one-server queue of ``m`` machines with load ``a``."""
    terms, term = 1.0, 1.0
    for k in range(1, m + 1):
        term *= (m - k + 1) * a
        terms += term
    return 1.0 / terms


def predict(n_shards: int, orderings: Sequence[Sequence[int]], cell_seconds: float,
            rate: float, slice_prior: Sequence[float] | None = None,
            stage_overhead: float = 0.0, job_overhead: float = 0.0) -> Prediction:
    """Predicted capacity, served depth and retrain compute for ``rate`` deletions/second;
    a rebuild that finds the trainer idle (a share ``P0`` of them) first pays
    ``job_overhead``, a retrain job's start."""
    if n_shards < 1 or cell_seconds <= 0 or rate < 0 or stage_overhead < 0 or job_overhead < 0:
        raise ValueError("need n_shards >= 1, cell_seconds > 0, rate >= 0, stage_overhead >= 0 "
                         "and job_overhead >= 0")
    orders = [tuple(int(s) for s in o) for o in orderings]
    n = len(orders[0])
    p = np.full(n, 1.0 / n) if slice_prior is None else np.asarray(slice_prior, dtype=float)
    p = p / p.sum()
    lam = rate / n_shards
    if rate == 0:
        return Prediction(1.0, 1.0, 0.0, 0.0, 0.0, True)
    result = None
    for regime in (orders, orders[:1]):  # all orderings kept, then primary chains only
        tables = _per_hit_set(regime, cell_seconds, stage_overhead, lam, p)
        depth, rebuild, lost, fallback = tables
        hit_sets = _HitSets(p)
        wait, idle = 0.0, 1.0
        for _ in range(50):  # fixed point: hits while a shard waits lower its depth further
            dist = hit_sets(lam * wait)
            service = float(dist @ rebuild) + job_overhead * idle
            a = lam * service
            busy = 1.0 - _repairman(n_shards, a)
            settled = abs((1.0 - busy) - idle) <= 1e-6
            idle = 1.0 - busy
            up = busy / (n_shards * a) if a > 0 else 1.0
            failures = lam * up                     # per shard per second
            down = (1.0 - up) / failures if failures > 0 else 0.0
            new_wait = max(0.0, down - service)
            if abs(new_wait - wait) <= 1e-6 * (1.0 + wait) and settled:
                break
            wait = 0.5 * (wait + new_wait)
        deficit = float(dist @ ((n - depth) * wait + lost))
        served = max(0.0, 1.0 - failures * deficit / n)
        fallback_load = rate * float(hit_sets(0.0) @ fallback)
        full = regime is orders
        keeps_up = full and busy + fallback_load < 1.0
        # primary chains only: the fallbacks that cannot keep up take whatever time is left
        trainer = min(1.0, busy + fallback_load) if full else 1.0
        result = Prediction(up, served, trainer, trainer * DAY, service, keeps_up)
        if keeps_up or len(regime) == 1:
            break
    assert result is not None
    return result
