"""The deletion-simulation report behind ``s3t simulate``: planning only, no torch.

S3T against SISA, Monte Carlo against the closed forms, plus the stage counts and training
cost of the plan. Kept out of the command line so that it can be reused and tested as plain
functions; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from s3t.plan.orderings import STRATEGIES, default_budget, make_orderings, sisa_orderings
from s3t.plan.prefix_tree import PrefixTree
from s3t.plan.simulate import simulate
from s3t.plan.theory import (
    deletion_rate,
    deletion_rate_s3t,
    distinct_first_slices,
    expected_prefix_length,
    first_shard_death,
)

CURVE_STRATEGIES = ("cyclic", "bms", "random")
MAX_SLICES = 12  # the exact closed forms enumerate 2^L hit sets
MAX_BUDGET = 5040  # 7!: beyond this the simulation's memory and time grow too much
MAX_TRIALS = 1_000_000


class SimulationArgumentError(ValueError):
    """A bad ``simulation_report`` argument, found before any work is done.

    ``parameter`` names it and ``reason`` says what is wrong, so a front end can point at its
    own option for it (``s3t simulate`` prints ``--<parameter>: <reason>``).
    """

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter} {reason}")
        self.parameter = parameter
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # pickles despite the two arguments
        return type(self), (self.parameter, self.reason)


def check_simulation(
    shards: int, slices: int, budget: int | None, strategy: str, prior: list[float] | None,
    trials: int, seed: int, t: float,
) -> int:
    """Validate ``simulation_report``'s arguments, keeping its cost bounded; return the budget
    (``default_budget`` for ``None``). Raises ``SimulationArgumentError``."""
    if shards < 1:
        raise SimulationArgumentError("shards", f"must be >= 1, got {shards}")
    if not 1 <= slices <= MAX_SLICES:
        raise SimulationArgumentError("slices", f"must be in [1, {MAX_SLICES}], got {slices}")
    if strategy not in STRATEGIES:
        raise SimulationArgumentError(
            "strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if budget is None:
        budget = default_budget(strategy, slices)
    if strategy == "sisa" and budget != 1:
        raise SimulationArgumentError("budget", f"must be 1 for strategy sisa, got {budget}")
    if strategy == "full" and budget != math.factorial(slices):
        raise SimulationArgumentError(
            "budget", f"must be {math.factorial(slices)} (= slices!) for strategy full, got {budget}")
    top = min(math.factorial(slices), MAX_BUDGET)
    if not 1 <= budget <= top:
        raise SimulationArgumentError(
            "budget", f"must be in [1, {top}] (min(slices!, {MAX_BUDGET})), got {budget}")
    if not 1 <= trials <= MAX_TRIALS:
        raise SimulationArgumentError("trials", f"must be in [1, {MAX_TRIALS}], got {trials}")
    if seed < 0:
        raise SimulationArgumentError("seed", f"must be >= 0, got {seed}")
    if not (math.isfinite(t) and t > 0):
        raise SimulationArgumentError("t", f"must be a finite number > 0, got {t}")
    if prior is not None and len(prior) != slices:
        raise SimulationArgumentError(
            "prior", f"expected {slices} probabilities (one per slice), got {len(prior)}")
    if prior is not None and (any(not math.isfinite(v) or v < 0 for v in prior)
                              or abs(sum(prior) - 1) > 1e-6):
        raise SimulationArgumentError(
            "prior", f"probabilities must be in [0, 1] and sum to 1 (within 1e-6), got {prior}")
    return budget


def simulation_report(
    shards: int, slices: int, budget: int | None, strategy: str, prior: list[float] | None,
    trials: int, seed: int, t: float,
) -> dict[str, Any]:
    """Simulate deletions against a plan and SISA; one flat dict, ready for JSON.

    Raises ``SimulationArgumentError`` for a bad argument (see ``check_simulation``) and
    ``ValueError`` for a prior under which a shard can never die (infinite deletion rate).
    """
    budget = check_simulation(shards, slices, budget, strategy, prior, trials, seed, t)
    orderings = make_orderings(strategy, slices, budget, prior=prior, t=t, seed=seed)
    sisa = sisa_orderings(slices)
    checkpoints = (shards, 2 * shards, shards * slices, 2 * shards * slices)
    s3t_res = simulate(shards, slices, orderings, prior, trials, seed, checkpoints)
    sisa_res = simulate(shards, slices, sisa, prior, trials, seed, checkpoints)
    tree = PrefixTree(orderings)
    return {
        "shards": shards,
        "slices": slices,
        "budget": budget,
        "strategy": strategy,
        "prior": s3t_res.prior,
        "trials": trials,
        "seed": seed,
        "t": t,
        "orderings": [list(o) for o in orderings],
        "distinct_first_slices": distinct_first_slices(orderings),
        "deletion_rate": s3t_res.deletion_rate,
        "deletion_rate_std": s3t_res.deletion_rate_std,
        "deletion_rate_closed_form": deletion_rate(shards, orderings, prior),
        "deletion_rate_paper_formula": deletion_rate_s3t(shards, slices, min(budget, slices)),
        "first_shard_death": s3t_res.first_shard_death,
        "first_shard_death_std": s3t_res.first_shard_death_std,
        "first_shard_death_closed_form": first_shard_death(shards, orderings, prior),
        "sisa_deletion_rate": sisa_res.deletion_rate,
        "sisa_deletion_rate_std": sisa_res.deletion_rate_std,
        "sisa_deletion_rate_closed_form": deletion_rate(shards, sisa, prior),
        "sisa_first_shard_death": sisa_res.first_shard_death,
        "sisa_first_shard_death_closed_form": first_shard_death(shards, sisa, prior),
        "checkpoints": list(checkpoints),
        "mean_prefix_length": list(s3t_res.mean_prefix_length),
        "mean_prefix_length_closed_form": [
            expected_prefix_length(shards, orderings, r, prior) for r in checkpoints
        ],
        "sisa_mean_prefix_length": list(sisa_res.mean_prefix_length),
        "sisa_mean_prefix_length_closed_form": [
            expected_prefix_length(shards, sisa, r, prior) for r in checkpoints
        ],
        "stages": shards * tree.count(),
        "stages_without_sharing": shards * tree.count_without_sharing(),
        "stages_per_shard": tree.count(),
        "sisa_stages": shards * slices,
        "training_cost_per_shard_sample": tree.training_cost(1),
        "training_cost_per_shard_sample_without_sharing": tree.training_cost(1, sharing=False),
    }


def budget_curve(
    shards: int, slices: int, prior: list[float] | None, trials: int, seed: int, t: float
) -> dict[str, Any]:
    """Simulated and closed-form deletion rate against budget for the structured strategies,
    so that the plot shows where more orderings stop paying off."""
    top = min(math.factorial(slices), 2 * slices)
    budgets = list(range(1, top + 1))
    curves: dict[str, dict[str, list[float]]] = {}
    for strategy in CURVE_STRATEGIES:
        sim, closed = [], []
        for b in budgets:
            orderings = make_orderings(strategy, slices, b, prior=prior, t=t, seed=seed)
            res = simulate(shards, slices, orderings, prior, trials=trials, seed=seed,
                           checkpoints=())
            sim.append(res.deletion_rate)
            closed.append(deletion_rate(shards, orderings, prior))
        curves[strategy] = {"simulated": sim, "closed_form": closed}
    paper = [deletion_rate_s3t(shards, slices, min(b, slices)) for b in budgets]
    sisa = deletion_rate(shards, sisa_orderings(slices), prior)
    return {"budgets": budgets, "curves": curves, "paper": paper, "sisa": sisa}


def plot_budget_curve(path: str | Path, curve: dict[str, Any], shards: int, slices: int,
                      uniform: bool) -> None:
    """Write ``budget_curve`` as a PNG; the paper's formula is drawn only for a uniform prior,
    the only case it covers. Raises ``OSError`` when ``path`` cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = curve["budgets"]
    colors = {"cyclic": "tab:blue", "bms": "tab:orange", "random": "tab:green"}
    for name, data in curve["curves"].items():
        ax.plot(budgets, data["simulated"], "o", color=colors[name], label=f"{name} (simulated)")
        ax.plot(budgets, data["closed_form"], "-", color=colors[name], alpha=0.6,
                label=f"{name} (closed form)")
    if uniform:
        ax.plot(budgets, curve["paper"], "k--", lw=1, label="m L H(m min(B, L)) (paper)")
    ax.axhline(curve["sisa"], color="tab:red", ls=":", label="SISA (B = 1)")
    ax.set_xlabel("budget B (orderings per shard)")
    ax.set_ylabel("requests until retraining")
    ax.set_title(f"Deletion rate, m = {shards} shards, L = {slices} slices")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _fmt(mean: float, std: float | None = None) -> str:
    if math.isinf(mean):
        return "inf"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} (sd {std:.1f})"


def format_report(rep: dict[str, Any]) -> str:
    """Plain-text report of ``simulation_report``: S3T vs SISA, simulated vs closed form."""
    head = (
        f"S3T deletion simulation: {rep['shards']} shards x {rep['slices']} slices, "
        f"strategy {rep['strategy']}, budget {rep['budget']} "
        f"({rep['trials']} trials, seed {rep['seed']})"
    )
    shown = " ".join("(" + ",".join(map(str, o)) + ")" for o in rep["orderings"][:8])
    more = f" ... (+{len(rep['orderings']) - 8})" if len(rep["orderings"]) > 8 else ""
    lines = [head, f"orderings per shard: {shown}{more}"]
    if rep["strategy"] == "bms" or any(abs(p - 1 / rep["slices"]) > 1e-9 for p in rep["prior"]):
        lines.append("deletion prior: " + ", ".join(f"{p:.3g}" for p in rep["prior"]))
    lines.append("")
    cols = ("", "S3T simulated", "S3T closed form", "SISA simulated", "SISA closed form")
    rows = [
        (
            "requests until retraining",
            _fmt(rep["deletion_rate"], rep["deletion_rate_std"]),
            _fmt(rep["deletion_rate_closed_form"]),
            _fmt(rep["sisa_deletion_rate"], rep["sisa_deletion_rate_std"]),
            _fmt(rep["sisa_deletion_rate_closed_form"]),
        ),
        (
            "requests until first shard dies",
            _fmt(rep["first_shard_death"], rep["first_shard_death_std"]),
            _fmt(rep["first_shard_death_closed_form"]),
            _fmt(rep["sisa_first_shard_death"]),
            _fmt(rep["sisa_first_shard_death_closed_form"]),
        ),
    ]
    for i, r in enumerate(rep["checkpoints"]):
        rows.append(
            (
                f"mean served prefix after {r} requests",
                _fmt(rep["mean_prefix_length"][i]),
                _fmt(rep["mean_prefix_length_closed_form"][i]),
                _fmt(rep["sisa_mean_prefix_length"][i]),
                _fmt(rep["sisa_mean_prefix_length_closed_form"][i]),
            )
        )
    widths = [max(len(str(row[c])) for row in [cols, *rows]) for c in range(len(cols))]
    for row in [cols, *rows]:
        lines.append(
            "  ".join(
                str(cell).ljust(w) if c == 0 else str(cell).rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines += [
        "",
        f"paper formula m L H(m min(B, L)) = {rep['deletion_rate_paper_formula']:.2f} "
        f"(uniform prior; this plan has {rep['distinct_first_slices']} distinct first slices)",
        f"stages: {rep['stages']} with prefix sharing, {rep['stages_without_sharing']} without "
        f"({rep['stages_per_shard']} per shard; SISA trains {rep['sisa_stages']})",
        f"training cost per shard: {rep['training_cost_per_shard_sample']:.2f} x shard size "
        f"sample-passes per epoch ({rep['training_cost_per_shard_sample_without_sharing']:.2f}"
        " without sharing)",
    ]
    if "plot" in rep:
        lines.append(f"plot written to {rep['plot']}")
    return "\n".join(lines)
