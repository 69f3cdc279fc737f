"""Monte Carlo deletion simulation: how many requests a plan absorbs before retraining.

Every shard trains the same orderings over its ``L`` slices; each request hits cell
(shard, slice) with probability ``prior[slice] / m``. A hit on a slice truncates every
ordering that contains it to the part before it; a shard serves its longest surviving
prefix and dies when that is empty; the system must retrain when all shards are dead.
Repeated hits on an already-hit cell still count as requests.

Everything depends only on the first request that hits each cell, so one trial is a vector
of first-hit times; trials are simulated together with numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from s3t.plan.orderings import Prior, check_orderings, check_prior

DEFAULT_CHECKPOINTS = (1, 5, 10, 20, 50, 100)

_NEVER = np.iinfo(np.int64).max  # first-hit time of a cell not hit (yet)
_MAX_DRAWS_PER_CHUNK = 4_000_000  # bound memory: trials x draws per chunk
_MAX_GATHER = 4_000_000  # bound memory: batch x shards x orderings x slices


@dataclass
class SimulationResult:
    """Monte Carlo estimates; request counts include the request that causes the event."""

    n_shards: int
    n_slices: int
    budget: int
    trials: int
    seed: int
    prior: list[float]
    deletion_rate: float  # mean requests until every shard is dead (system must retrain)
    deletion_rate_std: float
    first_shard_death: float  # mean requests until the first shard dies
    first_shard_death_std: float
    checkpoints: tuple[int, ...] = field(default_factory=tuple)
    mean_prefix_length: tuple[float, ...] = field(default_factory=tuple)  # slices, per shard

    @property
    def deletion_rate_sem(self) -> float:
        """Standard error of ``deletion_rate`` (for tolerance checks)."""
        return self.deletion_rate_std / math.sqrt(self.trials)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        out = asdict(self)
        out["checkpoints"] = list(self.checkpoints)
        out["mean_prefix_length"] = list(self.mean_prefix_length)
        out["deletion_rate_sem"] = self.deletion_rate_sem
        return out


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_checkpoints(checkpoints: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(r) for r in checkpoints)
    if any(r < 0 for r in out):
        raise ValueError(f"checkpoints must be request counts >= 0, got {list(out)}")
    return out


def _first_hit_times(
    rng: np.random.Generator,
    trials: int,
    cell_p: np.ndarray | None,
    n_cells: int,
    needed: np.ndarray,
    horizon: int,
    chunk: int,
) -> np.ndarray:
    """First-hit request index (1-based) per (trial, cell); ``_NEVER`` if not hit.

    Draws requests until every ``needed`` cell has been hit in every trial and at least
    ``horizon`` requests were drawn.
    """
    first = np.full((trials, n_cells), _NEVER, dtype=np.int64)
    drawn = 0
    rows = np.arange(trials, dtype=np.int64)[:, None] * n_cells
    while drawn < horizon or np.any(first[:, needed] == _NEVER):
        chunk = max(1, min(chunk, _MAX_DRAWS_PER_CHUNK // trials))
        if cell_p is None:
            cells = rng.integers(0, n_cells, size=(trials, chunk))
        else:
            cells = rng.choice(n_cells, size=(trials, chunk), p=cell_p)
        times = np.broadcast_to(np.arange(drawn + 1, drawn + chunk + 1), (trials, chunk))
        np.minimum.at(first.reshape(-1), (rows + cells).ravel(), times.ravel())
        drawn += chunk
        chunk *= 2
    return first


def served_prefix(alive: np.ndarray, orderings: np.ndarray) -> np.ndarray:
    """Longest surviving prefix over orderings; ``alive[..., slice]`` -> ``[...]`` lengths."""
    intact = np.logical_and.accumulate(alive[..., orderings], axis=-1)
    return intact.sum(axis=-1).max(axis=-1)


def simulate(
    n_shards: int,
    n_slices: int,
    orderings: Sequence[Sequence[int]],
    prior: Prior | None = None,
    trials: int = 2000,
    seed: int = 0,
    checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS,
) -> SimulationResult:
    """Simulate deletions against ``n_shards`` shards that all train ``orderings``.

    Reports the mean/std number of requests until the system must retrain and until the
    first shard dies, and the mean served prefix length (in slices, averaged over shards)
    after ``r`` requests for each ``r`` in ``checkpoints``. Seeded and deterministic.
    """
    m = _check_positive_int("n_shards", n_shards)
    n = check_orderings(orderings, n_slices)
    trials = _check_positive_int("trials", trials)
    cps = _check_checkpoints(checkpoints)
    p = check_prior(prior, n)
    orders = np.array([[int(s) for s in o] for o in orderings], dtype=np.int64)
    first_slices = np.unique(orders[:, 0])
    if np.any(p[first_slices] <= 0):
        raise ValueError(
            "prior gives probability 0 to a first slice "
            f"({[int(j) for j in first_slices if p[j] <= 0]}): that shard can never die, "
            "so the deletion rate is infinite"
        )
    n_cells = m * n
    uniform = prior is None or bool(np.allclose(p, 1.0 / n, atol=1e-12))
    cell_p = None if uniform else np.tile(p / m, m)
    cell_p = None if cell_p is None else cell_p / cell_p.sum()
    needed = (np.arange(m)[:, None] * n + first_slices[None, :]).ravel()
    # Start with about twice the uniform-prior expectation; the loop doubles if needed.
    guess = int(2 * n * m * sum(1.0 / i for i in range(1, m * len(first_slices) + 1))) + 8
    rng = np.random.default_rng(seed)
    first = _first_hit_times(rng, trials, cell_p, n_cells, needed, max(cps, default=0), guess)

    by_shard = first.reshape(trials, m, n)
    shard_death = by_shard[:, :, first_slices].max(axis=2)  # (trials, m)
    retrain = shard_death.max(axis=1).astype(float)
    first_death = shard_death.min(axis=1).astype(float)

    batch = max(1, _MAX_GATHER // (m * orders.shape[0] * n))
    prefix_means = []
    for r in cps:
        total = 0.0
        for lo in range(0, trials, batch):
            alive = by_shard[lo : lo + batch] > r
            total += float(served_prefix(alive, orders).sum())
        prefix_means.append(total / (trials * m))

    ddof = 1 if trials > 1 else 0
    return SimulationResult(
        n_shards=m,
        n_slices=n,
        budget=len(orderings),
        trials=trials,
        seed=int(seed),
        prior=[float(x) for x in p],
        deletion_rate=float(retrain.mean()),
        deletion_rate_std=float(retrain.std(ddof=ddof)),
        first_shard_death=float(first_death.mean()),
        first_shard_death_std=float(first_death.std(ddof=ddof)),
        checkpoints=cps,
        mean_prefix_length=tuple(prefix_means),
    )


def simulate_retention(
    orderings: Sequence[Sequence[int]],
    r: int,
    prior: Prior | None = None,
    trials: int = 20000,
    seed: int = 0,
) -> np.ndarray:
    """Monte Carlo ``P[served prefix >= k]`` for ``k = 0..L`` after ``r`` deletions in a shard.

    The empirical counterpart of ``theory.retention_exact`` and the paper's formulas.
    """
    n = check_orderings(orderings)
    trials = _check_positive_int("trials", trials)
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    p = check_prior(prior, n)
    orders = np.array([[int(s) for s in o] for o in orderings], dtype=np.int64)
    rng = np.random.default_rng(seed)
    hits = rng.choice(n, size=(trials, r), p=p)
    alive = np.ones((trials, n), dtype=bool)
    alive[np.repeat(np.arange(trials), r), hits.ravel()] = False
    batch = max(1, _MAX_GATHER // (orders.shape[0] * n))
    served = np.concatenate(
        [served_prefix(alive[lo : lo + batch], orders) for lo in range(0, trials, batch)]
    )
    return np.array([(served >= k).mean() for k in range(n + 1)])
