"""How much placement by prior saves: stages invalidated per deletion under a skewed stream.

Users (groups of ``samples_per_user`` samples) are deleted in a stream drawn from a Zipf
distribution over users, without replacement (a user is forgotten once). The placement rule
sees priors *estimated* from a past stream of ``history`` requests drawn from the same
distribution (add-one smoothed; ``history=0`` gives it the true likelihoods). Both arms see
the same users, priors and stream (common random numbers):

* ``uniform``: ``place_units(rule="uniform")`` (what training does today) and the given
  strategy's orderings;
* ``prior``: ``place_units(rule="prior")`` and ``bms`` orderings on the resulting slice
  prior (``sisa`` and ``full`` keep their fixed orderings).

Every ``window`` deletions a retrain restores every stage (``None``: when no shard serves,
the paper's retrain-when-dead cycle). A deletion invalidates the stages of its shard whose
prefix holds its slice and are still valid; the figure of merit is their mean count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from s3t.plan.orderings import make_orderings
from s3t.plan.placement import place_units, slice_prior, zipf_weights
from s3t.plan.prefix_tree import PrefixTree


@dataclass
class PlacementArm:
    """One placement rule's outcome, means over trials."""

    stages_invalidated_per_deletion: float
    served_depth_fraction: float      # mean served depth / L over shards, after each deletion
    retrains_per_100_deletions: float
    slice_prior: list[float]          # mean over trials (prior arm: what bms saw)
    orderings: list[list[int]]        # of the first trial


def _tables(orderings: list[tuple[int, ...]], n_slices: int) -> tuple[list[int], list[int], int]:
    """Per slice, a bitmask of the stages whose prefix holds it; served depth per hit-set
    bitmask; the number of stages per shard."""
    stages = PrefixTree(orderings).stages
    contains = [sum(1 << i for i, st in enumerate(stages) if s in st.slices)
                for s in range(n_slices)]
    depth = []
    for hit in range(1 << n_slices):
        best = 0
        for o in orderings:
            k = 0
            while k < n_slices and not hit >> o[k] & 1:
                k += 1
            best = max(best, k)
        depth.append(best)
    return contains, depth, len(stages)


def _run_stream(cells: list[tuple[int, int]], stream: np.ndarray, orderings: list[tuple[int, ...]],
                n_shards: int, n_slices: int, window: int | None) -> tuple[int, float, int]:
    contains, depth, _ = _tables(orderings, n_slices)
    invalid = [0] * n_shards
    hit = [0] * n_shards
    stages = 0
    depth_sum = 0.0
    retrains = 0
    since = 0
    for user in stream:
        shard, sl = cells[int(user)]
        stages += (contains[sl] & ~invalid[shard]).bit_count()
        invalid[shard] |= contains[sl]
        hit[shard] |= 1 << sl
        depths = [depth[h] for h in hit]
        depth_sum += sum(depths) / (n_shards * n_slices)
        since += 1
        if (window is not None and since >= window) or (window is None and not any(depths)):
            invalid, hit, since = [0] * n_shards, [0] * n_shards, 0
            retrains += 1
    return stages, depth_sum, retrains


def simulate_placement(n_shards: int, n_slices: int, budget: int, strategy: str = "cyclic",
                       users: int = 1000, samples_per_user: int = 2, skew: float = 1.1,
                       deletions: int = 100, window: int | None = None, history: int = 0,
                       trials: int = 50, seed: int = 0) -> dict:
    """Uniform against prior placement on the same Zipf(``skew``) stream of ``deletions``
    users; returns both arms and the relative cut in stages invalidated per deletion."""
    for name, value in (("n_shards", n_shards), ("n_slices", n_slices), ("budget", budget),
                        ("users", users), ("samples_per_user", samples_per_user),
                        ("deletions", deletions), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if deletions > users:
        raise ValueError(f"deletions ({deletions}) cannot exceed users ({users}): a user is "
                         "forgotten once")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 deletions (or None: retrain when dead), got {window}")
    if history < 0:
        raise ValueError(f"history must be >= 0 past requests, got {history}")
    rng = np.random.default_rng(seed)
    sizes = [samples_per_user] * users
    base = make_orderings(strategy, n_slices, budget, seed=seed)
    prior_strategy = "bms" if strategy in ("cyclic", "bms", "random") else strategy
    totals = {arm: np.zeros(3) for arm in ("uniform", "prior")}
    priors_seen = np.zeros(n_slices)
    first: dict[str, list[list[int]]] = {}
    for trial in range(trials):
        w = zipf_weights(users, skew, rng)
        if history:
            counts = np.bincount(rng.choice(users, size=history, p=w), minlength=users)
            est = (counts + 1.0) / (history + users)
        else:
            est = w
        stream = np.argsort(rng.exponential(size=users) / w, kind="stable")[:deletions]
        cell_seed = seed + trial
        uniform_cells = place_units(sizes, None, n_shards, n_slices, cell_seed, "uniform")
        prior_cells = place_units(sizes, est, n_shards, n_slices, cell_seed, "prior")
        sp = slice_prior(prior_cells, est, n_slices)
        priors_seen += sp
        prior_orders = make_orderings(prior_strategy, n_slices, budget,
                                      prior=sp if prior_strategy == "bms" else None, seed=seed)
        for arm, cells, orders in (("uniform", uniform_cells, base),
                                   ("prior", prior_cells, prior_orders)):
            first.setdefault(arm, [list(o) for o in orders])
            totals[arm] += _run_stream(cells, stream, orders, n_shards, n_slices, window)
    n = trials * deletions
    arms = {}
    for arm, (stages, depth_sum, retrains) in totals.items():
        arms[arm] = asdict(PlacementArm(
            stages_invalidated_per_deletion=float(stages / n),
            served_depth_fraction=float(depth_sum / n),
            retrains_per_100_deletions=float(100 * retrains / n),
            slice_prior=[float(x) for x in (priors_seen / trials if arm == "prior"
                                            else np.full(n_slices, 1 / n_slices))],
            orderings=first[arm]))
    u, p = (arms[a]["stages_invalidated_per_deletion"] for a in ("uniform", "prior"))
    return {"shards": n_shards, "slices": n_slices, "budget": budget, "strategy": strategy,
            "users": users, "samples_per_user": samples_per_user, "skew": skew,
            "deletions": deletions, "window": window, "history": history, "trials": trials,
            "seed": seed, "uniform": arms["uniform"], "prior": arms["prior"],
            "stages_cut": float(1 - p / u) if u > 0 else 0.0}
