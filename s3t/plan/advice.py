"""``s3t plan``: choose m, L, B and a retrain policy for a data size, deletion rate and
training speed (pure, no torch).

Every candidate plan (shards, slices, budget) is scored by ``capacity.predict`` (the
queueing model); where it says the trainer is nearly saturated, where that model is known
to be optimistic, by ``stream_sim.simulate_stream`` instead. The choice, in order:

1. plans whose predicted capacity (fraction of shards at full depth) reaches ``target``;
   among them the fewest shards (each shard's model learns from more data), then the
   highest served depth, then the least retrain compute;
2. if none does: the highest capacity (within 2 points, about the model's precision, the
   higher served depth wins, then fewer shards).

Capacity comes first because partial depths are weaker than their share of the layers
suggests at small sizes (BENCHMARKS.md sections 15 and 17); served depth breaks ties.
``L = 1, B = 1`` is SISA: it is recommended, with the reason, where no S3T plan does better.

What a partial depth is worth is a property of the data and recipe, not of the plan. Given
a trained run (``s3t plan --run``), its :class:`~s3t.plan.accuracy.DepthTable` says: then the
plans it can score (the run's shard count; slice counts dividing the run's) are chosen among
by predicted time-averaged served accuracy (within ACCURACY_TIE, by the rules above), and
SISA is recommended wherever its full-depth shards, out of service while they retrain, are
predicted to serve better than S3T's shards kept at partial depths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s3t.plan.accuracy import DepthTable
from s3t.plan.capacity import DAY, predict
from s3t.plan.orderings import make_orderings
from s3t.plan.prefix_tree import PrefixTree
from s3t.plan.stream_sim import merge_states, simulate_stream, simulate_window

SATURATED = 0.8     # trainer busy fraction above which a candidate is simulated
TIE = 0.02            # capacities closer than this are a tie (the model is not finer)


@dataclass
class Workload:
    """What ``s3t plan`` is told: data, deletion stream and training speed."""

    samples: int
    rate_per_day: float
    throughput: float                 # samples x epochs per second
    epochs: int = 3
    stage_overhead: float = 0.0       # seconds per stage beyond its samples
    job_overhead: float = 0.0         # seconds a retrain job spends starting (from idle)
    skew: float = 0.0                 # Zipf exponent over users; 0 = uniform
    users: int | None = None          # groups deleted as a whole (default: one per sample)
    placement: str = "uniform"
    horizon_s: float | None = None    # average over this window from a fully trained run
                                      # (None: the steady state)

    def check(self) -> None:
        """Raise ``ValueError`` naming the bad quantity and what would be valid."""
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")
        for name in ("rate_per_day", "throughput", "stage_overhead", "job_overhead", "skew"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.throughput <= 0:
            raise ValueError(f"throughput must be > 0 samples x epochs per second, got "
                             f"{self.throughput}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.users is not None and not 1 <= self.users <= self.samples:
            raise ValueError(f"users must be in [1, samples={self.samples}], got {self.users}")
        if self.horizon_s is not None and not (isinstance(self.horizon_s, (int, float))
                                               and math.isfinite(self.horizon_s)
                                               and self.horizon_s > 0):
            raise ValueError(f"horizon must be a duration > 0, got {self.horizon_s!r}")
        if self.placement not in ("uniform", "prior"):
            raise ValueError(f"placement must be uniform or prior, got {self.placement!r}")


def slice_prior_for(work: Workload, n_slices: int) -> list[float] | None:
    """Expected deletion mass per slice: uniform placement spreads users evenly; placement by
    prior puts the users sorted by likelihood into equal bands, the likeliest in the last."""
    if work.placement == "uniform" or work.skew == 0 or n_slices == 1:
        return None
    users = work.users or work.samples
    w = np.sort(np.arange(1, users + 1, dtype=float) ** -work.skew)
    bands = np.array_split(w, n_slices)
    mass = np.array([b.sum() for b in bands])
    return [float(x) for x in mass / mass.sum()]


def candidates(work: Workload, shards: Sequence[int], max_slices: int,
               max_budget: int | None) -> list[tuple[int, int, int]]:
    """(m, L, B) with at least one sample per cell; B up to L (more adds fallbacks only)."""
    out: list[tuple[int, int, int]] = []
    for m in shards:
        for n_slices in range(1, max_slices + 1):
            if work.samples < m * n_slices:
                continue
            top = min(math.factorial(n_slices), n_slices, max_budget or n_slices)
            out.extend((m, n_slices, b) for b in range(1, top + 1))
    return out


def evaluate(work: Workload, m: int, n_slices: int, budget: int, seed: int = 0,
             arrivals_until: float | None = None, table: DepthTable | None = None) -> dict:
    """Predictions for one plan under ``work``; see the module doc for the method. With
    ``work.horizon_s``, averages over that window from a fully trained run (simulated;
    deletions arriving until ``arrivals_until``, default the whole window). With a trained
    run's ``table`` (``s3t.plan.accuracy``), also the time-averaged served ``accuracy`` on
    its validation samples, where the table can answer for the plan (else None)."""
    prior = slice_prior_for(work, n_slices)
    strategy = "sisa" if budget == 1 else ("bms" if prior is not None else "cyclic")
    orderings = make_orderings(strategy, n_slices, budget, prior=prior, seed=seed)
    cell = work.samples / (m * n_slices) * work.epochs / work.throughput
    rate = work.rate_per_day / DAY
    pred = predict(m, orderings, cell, rate, prior, work.stage_overhead,
                   work.job_overhead).to_dict()
    pred["method"] = "queueing model"
    scored = table is not None and m == table.n_shards and table.scale(n_slices) is not None
    states: dict[tuple[int, ...], float] = {(n_slices,) * m: 1.0}  # no deletions: full depth
    # a window of at most WINDOW_DELETIONS is simulated whole: no steady state to refine
    steady_used = work.horizon_s is None or rate * work.horizon_s > WINDOW_DELETIONS
    saturated = pred["trainer_busy"] > SATURATED
    if rate > 0 and steady_used and (saturated or scored):
        sim = simulate_stream(m, orderings, cell, rate, prior, deletions=1500, warmup=100,
                              seed=seed, stage_overhead=work.stage_overhead,
                              job_overhead=work.job_overhead)
        states = sim["depth_states"]
        if saturated:
            pred.update(capacity=sim["capacity"],
                        served_depth_fraction=sim["served_depth_fraction"],
                        trainer_busy=sim["busy_fraction"],
                        retrain_seconds_per_day=sim["busy_fraction"] * DAY,
                        method="simulation (trainer nearly saturated)")
    if rate > 0 and work.horizon_s is not None:
        window = _window(work, m, orderings, cell, rate, prior, pred, seed, arrivals_until)
        share, window_states = window.pop("share"), window.pop("depth_states")
        states = window_states if share == 1 else merge_states([window_states, states],
                                                                [share, 1 - share])
        pred.update(window)
    if table is not None:
        pred["accuracy"] = table.expected(states, m, n_slices, budget) if scored else None
    tree = PrefixTree(orderings)
    train = m * sum(st.depth * cell + work.stage_overhead for st in tree.stages)
    return {"shards": m, "slices": n_slices, "budget": budget, "strategy": strategy,
            "orderings": [list(o) for o in orderings], "slice_prior": prior,
            "training_seconds": train, **pred}


WINDOW_DELETIONS = 4000  # simulated deletions per plan: past them a window is in steady state


def _window(work: Workload, m: int, orderings: list, cell: float, rate: float,
            prior: list[float] | None, steady: dict, seed: int,
            arrivals_until: float | None) -> dict:
    """Averages over ``work.horizon_s`` from a fully trained run. The window's first
    WINDOW_DELETIONS deletions (all of it, if fewer are expected) are simulated over several
    streams; the rest of a longer window is in steady state (``steady``, the prediction).
    Also the simulated part's ``share`` of the window and its ``depth_states``."""
    horizon = float(work.horizon_s or 0.0)
    expected = rate * horizon
    simulated = min(horizon, WINDOW_DELETIONS / rate)
    trials = int(min(200, max(1, WINDOW_DELETIONS / max(1.0, expected))))
    sim = simulate_window(m, orderings, cell, rate, simulated, arrivals_until, prior,
                          trials=trials, seed=seed, stage_overhead=work.stage_overhead,
                          job_overhead=work.job_overhead)
    share = simulated / horizon
    keys = {"capacity": "capacity", "served_depth_fraction": "served_depth_fraction",
            "trainer_busy": "busy_fraction"}
    out = {k: share * sim[v] + (1 - share) * steady[k] for k, v in keys.items()}
    out["retrain_seconds_per_day"] = out["trainer_busy"] * DAY
    out["method"] = (f"simulation over {_hours(horizon)} from a fully trained run"
                     + (f" ({_hours(simulated)} simulated, then the steady state)"
                        if share < 1 else ""))
    out.update(share=share, depth_states=sim["depth_states"])
    return out


def _pick(rows: list[dict], target: float) -> dict:
    feasible = [r for r in rows if r["capacity"] >= target]
    if feasible:
        return min(feasible, key=lambda r: (r["shards"], -r["served_depth_fraction"],
                                            r["retrain_seconds_per_day"], r["training_seconds"]))
    best = max(r["capacity"] for r in rows)
    close = [r for r in rows if r["capacity"] >= best - TIE]
    return min(close, key=lambda r: (-r["served_depth_fraction"], r["shards"],
                                     r["retrain_seconds_per_day"]))


def _rate(per_day: float) -> str:
    for unit, per in (("min", 1440.0), ("h", 24.0)):
        if per_day >= per:
            return f"{per_day / per:.3g}/{unit}"
    return f"{per_day:.3g}/day"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min" \
        if seconds >= 90 else f"{seconds:.0f} s"


def recommend(work: Workload, shards: Sequence[int] = tuple(range(1, 9)), max_slices: int = 4,
              max_budget: int | None = None, target: float = 0.95,
              table: DepthTable | None = None, arrivals_until: float | None = None) -> dict:
    """Score every candidate plan and pick one (module doc); explain the choice. With a
    trained run's ``table``, the plans it can score are chosen among by predicted accuracy.
    ``arrivals_until``: with ``work.horizon_s``, when deletions stop (``evaluate``)."""
    work.check()
    if not shards or any(m < 1 for m in shards):
        raise ValueError(f"shards must be integers >= 1, got {list(shards)}")
    if not 1 <= max_slices <= 8:
        raise ValueError(f"max_slices must be in [1, 8], got {max_slices}")
    if not (math.isfinite(target) and 0 < target <= 1):
        raise ValueError(f"target must be a fraction in (0, 1], got {target}")
    plans = candidates(work, sorted(set(shards)), max_slices, max_budget)
    if not plans:
        raise ValueError(f"{work.samples} samples cannot fill any plan: need at least "
                         f"{min(shards)} shards x 1 slice")
    rows = [evaluate(work, *plan, table=table, arrivals_until=arrivals_until) for plan in plans]
    scored = [r for r in rows if r.get("accuracy") is not None]
    if table is not None and scored:
        return _by_accuracy(work, target, table, rows, scored)
    best = _pick(rows, target)
    sisa = _pick([r for r in rows if r["slices"] == 1 and r["budget"] == 1], target)
    s3t_rows = [r for r in rows if (r["slices"], r["budget"]) != (1, 1)]
    best_s3t = _pick(s3t_rows, target) if s3t_rows else None
    rate = work.rate_per_day
    gap = DAY / rate * best["shards"] if rate > 0 else math.inf
    is_sisa = best["slices"] == 1 and best["budget"] == 1
    if is_sisa and best_s3t is not None:
        why = (f"S3T cannot win here: each shard is hit every {_hours(gap)} on average; the "
               f"best S3T plan (m={best_s3t['shards']}, L={best_s3t['slices']}, "
               f"B={best_s3t['budget']}) needs {_hours(best_s3t['rebuild_seconds'])} to rebuild "
               f"a shard's chain to full depth (trainer busy {best_s3t['trainer_busy']:.0%}) "
               f"and keeps {best_s3t['capacity']:.0%} of shards at full depth, while SISA "
               f"(L=1, B=1) rebuilds a shard in one stage of {_hours(best['rebuild_seconds'])} "
               f"and keeps {best['capacity']:.0%}")
    elif is_sisa:
        why = "only L=1, B=1 (SISA) was allowed (--max-slices 1)"
    else:
        why = (f"S3T keeps {best['capacity']:.0%} of shards at full depth and serves "
               f"{best['served_depth_fraction']:.1%} of full depth on average; SISA "
               f"(m={sisa['shards']}, L=1, B=1) would keep {sisa['capacity']:.0%} and serve "
               f"{sisa['served_depth_fraction']:.1%}")
    return _report(work, target, rows, best, why, sisa, best_s3t, chosen_by="capacity")


def _report(work: Workload, target: float, rows: list[dict], best: dict, why: str,
            sisa: dict, best_s3t: dict | None, **extra: object) -> dict:
    """``recommend``'s answer, whichever rule chose ``best``."""
    return {"workload": {**work.__dict__}, "target": target, "recommended": best, "why": why,
            "retrain_policy": _policy(best), "sisa": sisa, "best_s3t": best_s3t,
            "meets_target": best["capacity"] >= target, "candidates": rows, **extra}


def _policy(best: dict) -> str:
    policy = ("eager: `s3t serve --retrain eager` (rebuild as soon as a deletion lands; primary "
              "chains first)")
    if best["trainer_busy"] >= 0.95:
        policy += ("; the trainer is saturated at this rate: no plan keeps up, so add trainers "
                   "(--executor ray) or raise throughput")
    return policy


ACCURACY_TIE = 0.005  # predicted accuracies closer than this are a tie


def _by_accuracy(work: Workload, target: float, table: DepthTable, rows: list[dict],
                 scored: list[dict]) -> dict:
    """The choice among the plans a run's table scores: the highest predicted accuracy
    (within ACCURACY_TIE, the capacity rules of ``_pick``), explained against SISA."""
    top = max(r["accuracy"] for r in scored)
    best = _pick([r for r in scored if r["accuracy"] >= top - ACCURACY_TIE], target)
    sisa = next(r for r in scored if r["slices"] == 1 and r["budget"] == 1)
    s3t_rows = [r for r in scored if r is not sisa]
    best_s3t = max(s3t_rows, key=lambda r: r["accuracy"]) if s3t_rows else None
    alone = table.depth_scores()
    depths = " / ".join(f"{a:.2f}" for a in alone)
    basis = (f"the run's own stages, scored on {len(table.labels)} validation samples and "
             f"weighed by the time a {_rate(work.rate_per_day)} stream keeps each shard at "
             f"each depth")
    worth = (f"one shard's stages alone score {depths} at depths 1..{table.n_slices} of "
             f"{table.n_slices}")
    if best is sisa and best_s3t is not None:
        why = (f"S3T cannot win here: {basis}, predict SISA (m={sisa['shards']}, L=1, B=1) "
               f"serves {sisa['accuracy']:.3f} against {best_s3t['accuracy']:.3f} for the best "
               f"S3T plan (L={best_s3t['slices']}, B={best_s3t['budget']}); {worth}, so a "
               f"shard kept serving at a partial depth adds less than SISA's full-depth shards "
               f"lose by being out of service while they retrain (S3T keeps "
               f"{best_s3t['capacity']:.0%} of shards at full depth, SISA "
               f"{sisa['capacity']:.0%})")
    elif best is sisa:
        why = (f"only L=1, B=1 (SISA) could be scored; {basis}, predict "
               f"{sisa['accuracy']:.3f}")
    else:
        why = (f"{basis}, predict S3T (m={best['shards']}, L={best['slices']}, "
               f"B={best['budget']}) serves {best['accuracy']:.3f} against "
               f"{sisa['accuracy']:.3f} for SISA (L=1, B=1); {worth}, and S3T keeps "
               f"{best['capacity']:.0%} of shards at full depth (SISA {sisa['capacity']:.0%})")
    full = table.scores([table.n_slices] * table.n_shards)
    return _report(work, target, rows, best, why, sisa, best_s3t, chosen_by="accuracy",
                   accuracy_basis={"validation_samples": int(len(table.labels)),
                                   "undisturbed": full, "depth_scores": alone,
                                   "shards": table.n_shards, "slices": table.n_slices})


_UNITS = {"s": 86400.0, "sec": 86400.0, "min": 1440.0, "h": 24.0, "hour": 24.0, "d": 1.0,
          "day": 1.0, "week": 1 / 7}


def parse_rate(text: str) -> float:
    """``"10/day"``, ``"2.5/h"``, ``"1/min"``, ``"0.1/s"`` -> deletions per day."""
    count, slash, unit = text.strip().partition("/")
    try:
        value = float(count)
    except ValueError:
        value = math.nan
    if not slash or unit.strip() not in _UNITS or not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a rate like 10/day, 2/h, 1/min or 0.1/s (a number >= 0 per "
                         f"{', '.join(_UNITS)}), got {text!r}")
    return value * _UNITS[unit.strip()]


_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": DAY,
            "day": DAY, "week": 7 * DAY}


def parse_duration(text: str) -> float:
    """``"150s"``, ``"30min"``, ``"8h"``, ``"2d"`` -> seconds."""
    stripped = text.strip()
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = stripped[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in _SECONDS or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a duration like 150s, 30min, 8h or 2d (a number > 0 and one "
                         f"of {', '.join(_SECONDS)}), got {text!r}")
    return value * _SECONDS[unit]


def fit_throughput(visits: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Throughput (samples x epochs per second) and per-stage overhead (seconds) from stage
    timings: least squares of ``seconds = overhead + visits / throughput``; with too little
    spread in the stages' sizes, or a negative fit, no overhead and the ratio of sums."""
    v = np.asarray(visits, dtype=float)
    s = np.asarray(seconds, dtype=float)
    if v.size == 0 or v.shape != s.shape or np.any(v <= 0) or np.any(s <= 0):
        raise ValueError("need at least one stage with samples and a positive training time")
    if v.size >= 3 and np.ptp(v) > 0.2 * v.mean():
        slope, overhead = np.polyfit(v, s, 1)
        if slope > 0 and overhead >= 0:
            return float(1.0 / slope), float(overhead)
    return float(v.sum() / s.sum()), 0.0
