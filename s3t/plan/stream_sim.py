"""Discrete-event simulation of a deletion stream against a plan with one eager retrainer.

The reference that ``s3t.plan.capacity``'s queueing model is checked against. Deletions
arrive as a Poisson process of ``rate`` per second; each hits a shard uniformly and a slice
by ``slice_prior``, and invalidates the shard's stages whose prefix holds that slice. One
trainer rebuilds missing stages, one at a time, as the scheduler orders them
(``s3t.train.scheduler.prioritise``): primary chains first (the ordering with the longest
live prefix of the shard serving shallowest), then fallback stages, shallowest first. A
stage of depth ``p`` takes ``p * cell_seconds + stage_overhead`` (``stage_steps="epochs"``:
it sees ``p`` cells per epoch); a job that starts with the trainer idle first spends
``job_overhead`` (a retrain process's start: imports, model load). A deletion that
invalidates the stage in training, or its parent, cancels it (the work is lost; the
scheduler re-plans). Reported, time-averaged after a warm-up: the fraction of shards at full
depth (*capacity*), the mean served depth over ``L``, the trainer's busy fraction, and the
share of time spent in each *depth state* (the shards' served depths, sorted: what
``s3t.plan.accuracy`` turns into a served accuracy).

``simulate_window`` answers the other question a deployment asks: not the steady state but
the average over a finite window that starts from a fully trained run (the hours until the
next scheduled full retrain, or a benchmark's stream); at high rates the two differ widely,
because a fresh run starts at full capacity and the steady state is reached only after many
deletions per shard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from s3t.plan.prefix_tree import PrefixTree


class _Shard:
    """Live stages of one shard as a bitmask over the prefix tree's stages."""

    def __init__(self, tree: PrefixTree) -> None:
        self.live = (1 << len(tree.stages)) - 1


def simulate_window(n_shards: int, orderings: Sequence[Sequence[int]], cell_seconds: float,
                    rate: float, horizon: float, arrivals_until: float | None = None,
                    slice_prior: Sequence[float] | None = None, trials: int = 200,
                    seed: int = 0, stage_overhead: float = 0.0, job_overhead: float = 0.0) -> dict:
    """Time averages over ``[0, horizon]`` from a fully trained run, deletions arriving until
    ``arrivals_until`` (default: the whole window), averaged over ``trials`` streams."""
    if not (horizon > 0 and trials >= 1):
        raise ValueError("need horizon > 0 and trials >= 1")
    until = horizon if arrivals_until is None else min(arrivals_until, horizon)
    runs = [_simulate(n_shards, orderings, cell_seconds, rate, slice_prior, 0, 0, seed + i,
                      stage_overhead, horizon=horizon, arrivals_until=until,
                      job_overhead=job_overhead)
            for i in range(trials)]
    keys = ("capacity", "served_depth_fraction", "busy_fraction")
    out: dict = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    out.update({f"{k}_sd": float(np.std([r[k] for r in runs])) for k in keys})
    out["depth_states"] = merge_states([r["depth_states"] for r in runs])
    out.update(span_seconds=horizon, deletions=float(np.mean([r["deletions"] for r in runs])),
               trials=trials)
    return out


def merge_states(parts: Sequence[dict], shares: Sequence[float] | None = None) -> dict:
    """The mixture of several depth-state distributions (equal shares by default)."""
    shares = [1.0 / len(parts)] * len(parts) if shares is None else list(shares)
    out: dict[tuple[int, ...], float] = {}
    for part, share in zip(parts, shares, strict=True):
        for state, p in part.items():
            out[state] = out.get(state, 0.0) + share * p
    return out


def simulate_stream(n_shards: int, orderings: Sequence[Sequence[int]], cell_seconds: float,
                    rate: float, slice_prior: Sequence[float] | None = None,
                    deletions: int = 4000, warmup: int = 200, seed: int = 0,
                    stage_overhead: float = 0.0, job_overhead: float = 0.0) -> dict:
    """Run ``warmup + deletions`` Poisson deletions; time averages over the last ``deletions``."""
    if deletions < 1 or warmup < 0:
        raise ValueError("need deletions >= 1 and warmup >= 0")
    return _simulate(n_shards, orderings, cell_seconds, rate, slice_prior, deletions, warmup,
                     seed, stage_overhead, job_overhead=job_overhead)


def _simulate(n_shards: int, orderings: Sequence[Sequence[int]], cell_seconds: float,
              rate: float, slice_prior: Sequence[float] | None, deletions: int, warmup: int,
              seed: int, stage_overhead: float, horizon: float | None = None,
              arrivals_until: float = math.inf, job_overhead: float = 0.0) -> dict:
    """The event loop: until ``warmup + deletions`` arrivals, or with ``horizon``, over
    ``[0, horizon]`` from time 0 (all stages live) with arrivals until ``arrivals_until``."""
    if n_shards < 1 or cell_seconds <= 0 or rate <= 0 or stage_overhead < 0 or job_overhead < 0:
        raise ValueError("need n_shards >= 1, cell_seconds > 0, rate > 0, stage_overhead >= 0 "
                         "and job_overhead >= 0")
    tree = PrefixTree([tuple(int(s) for s in o) for o in orderings])
    n_slices = tree.n_slices
    stages = tree.stages
    index = {st.prefix: i for i, st in enumerate(stages)}
    parent = [index[st.parent] if st.parent is not None else -1 for st in stages]
    cost = [st.depth * cell_seconds + stage_overhead for st in stages]
    contains = [sum(1 << i for i, st in enumerate(stages) if s in st.slices)
                for s in range(n_slices)]
    chains = [[index[o[:k]] for k in range(1, n_slices + 1)] for o in tree.orderings]
    by_depth = sorted(range(len(stages)), key=lambda i: (stages[i].depth, i))
    p = np.full(n_slices, 1.0 / n_slices) if slice_prior is None else np.asarray(slice_prior)
    p = p / p.sum()
    rng = np.random.default_rng(seed)
    shards = [_Shard(tree) for _ in range(n_shards)]

    def depth_of(sh: _Shard) -> tuple[int, list[int]]:
        best, chain = -1, chains[0]
        for c in chains:
            k = 0
            while k < n_slices and sh.live >> c[k] & 1:
                k += 1
            if k > best:
                best, chain = k, c
        return best, chain

    def next_job() -> tuple[int, int] | None:
        status = [depth_of(sh) for sh in shards]
        waiting = [(d, k) for k, (d, _) in enumerate(status) if d < n_slices]
        if waiting:
            d, k = min(waiting)
            return k, status[k][1][d]
        for i in by_depth:  # fallbacks: shallowest missing stage whose parent is live
            for k, sh in enumerate(shards):
                if not sh.live >> i & 1 and (parent[i] < 0 or sh.live >> parent[i] & 1):
                    return k, i
        return None

    t = 0.0
    job: tuple[int, int] | None = None
    job_end = math.inf
    next_arrival = rng.exponential(1.0 / rate)
    seen = 0
    start: float | None = None if horizon is None else 0.0
    end = math.inf if horizon is None else horizon
    if next_arrival >= arrivals_until:
        next_arrival = math.inf
    area_full = area_depth = busy = 0.0
    full_now = float(n_shards)
    depth_now = float(n_shards * n_slices)
    state_now = (n_slices,) * n_shards
    area_states: dict[tuple[int, ...], float] = {}
    busy_since: float | None = None

    def account(until: float) -> None:
        nonlocal area_full, area_depth
        if start is not None:
            area_full += full_now * (until - t)
            area_depth += depth_now * (until - t)
            area_states[state_now] = area_states.get(state_now, 0.0) + (until - t)

    def refresh() -> None:
        nonlocal full_now, depth_now, state_now
        ds = [depth_of(sh)[0] for sh in shards]
        full_now = float(sum(d == n_slices for d in ds))
        depth_now = float(sum(ds))
        state_now = tuple(sorted(ds))

    warm = False  # a retrain job is running (started since the trainer was last idle)
    while horizon is not None or seen < warmup + deletions:
        if job is None:
            job = next_job()
            if job is not None:
                job_end = t + cost[job[1]] + (0.0 if warm else job_overhead)
                warm = True
                if start is not None:
                    busy_since = max(t, start)
            else:
                warm = False
        if min(job_end, next_arrival) >= end:  # the window closes
            account(end)
            t = end
            break
        if job is not None and job_end <= next_arrival:
            account(job_end)
            t = job_end
            k, i = job
            shards[k].live |= 1 << i
            job, job_end = None, math.inf
            if busy_since is not None:
                busy += t - busy_since
                busy_since = None
            refresh()
            continue
        account(next_arrival)
        t = next_arrival
        next_arrival = t + rng.exponential(1.0 / rate)
        if next_arrival >= arrivals_until:
            next_arrival = math.inf
        seen += 1
        if seen == warmup + 1 and start is None:
            start = t
            busy_since = t if job is not None else None
        k = int(rng.integers(n_shards))
        s = int(rng.choice(n_slices, p=p))
        shards[k].live &= ~contains[s]
        if job is not None and job[0] == k and (contains[s] >> job[1] & 1 or (
                parent[job[1]] >= 0 and not shards[k].live >> parent[job[1]] & 1)):
            if busy_since is not None:
                busy += t - busy_since
                busy_since = None
            job, job_end = None, math.inf  # cancelled: the re-plan starts from here
        refresh()
    if busy_since is not None:
        busy += t - busy_since
    span = t - (start or 0.0)
    return {"capacity": area_full / (n_shards * span), "served_depth_fraction":
            area_depth / (n_shards * n_slices * span), "busy_fraction": busy / span,
            "span_seconds": span, "deletions": seen - warmup,
            "depth_states": {k: v / span for k, v in area_states.items() if v > 0}}
