"""Benchmark 4: simulated against closed-form deletion rates, as the budget grows.

Why: the deletion rate (expected uniform single-sample requests a system absorbs before
every shard is dead and it must retrain) is the paper's main planning quantity:
``m L H_{m B'}`` for S3T with ``B' = min(B, L)`` distinct first slices, ``m L H_m`` for
SISA. The planner (``s3t.plan``) uses it to choose budgets, so its closed forms must agree
with a Monte Carlo simulation of the actual serving rule (longest intact prefix per shard).
The paper's worked example, m=5 and L=4 (SISA 45.7, B=2 58.6, B=4 72.0), is reproduced.
No torch is needed.

    python -m bench deletion_rate [--quick] [--seeds 0]
"""

from __future__ import annotations

import math
from typing import Any

from bench import harness

NAME = "deletion_rate"
QUICK = {"trials": 5000, "grid_shards": [2, 5], "grid_slices": [3, 4]}
FULL = {"trials": 20000, "grid_shards": [2, 5, 10], "grid_slices": [3, 4, 6]}
SMOKE = {"trials": 300, "grid_shards": [2, 5], "grid_slices": [3, 4]}
PAPER = {"m": 5, "L": 4, "values": {"sisa": 45.7, "2": 58.6, "4": 72.0}}
TOLERANCE = 0.03


def budgets(n_slices: int) -> list[int]:
    """1..L (where the rate grows), then 2L and L! (where it must stay at the B=L value)."""
    extra = [b for b in (2 * n_slices, math.factorial(n_slices)) if b > n_slices]
    return sorted(set(range(1, n_slices + 1)) | set(extra))


def cases(m: int, n_slices: int, grid: bool) -> list[tuple[str, int]]:
    """(strategy, budget) pairs: SISA, cyclic at every budget; BMS/random on the grid."""
    out = [("sisa", 1)] + [("cyclic", b) for b in budgets(n_slices)]
    if grid:
        out += [("bms", b) for b in (2, n_slices)] + [("random", b) for b in (2, n_slices)]
    return out


def one(m: int, n_slices: int, strategy: str, budget: int, trials: int, seed: int) -> dict[str, Any]:
    """Simulate one plan and compare with the exact closed form for its orderings."""
    from s3t.plan import deletion_rate, distinct_first_slices, make_orderings, simulate
    from s3t.plan.theory import first_shard_death

    orderings = make_orderings(strategy, n_slices, budget, seed=seed)
    sim = simulate(m, n_slices, orderings, trials=trials, seed=seed, checkpoints=())
    closed = deletion_rate(m, orderings)
    first = first_shard_death(m, orderings)
    return {"m": m, "L": n_slices, "strategy": strategy, "budget": budget,
            "distinct_first_slices": distinct_first_slices(orderings), "trials": trials,
            "seed": seed, "simulated": sim.deletion_rate, "simulated_sem": sim.deletion_rate_sem,
            "closed_form": closed, "rel_error": sim.deletion_rate / closed - 1,
            "first_death_simulated": sim.first_shard_death, "first_death_closed_form": first,
            "first_death_rel_error": sim.first_shard_death / first - 1}


def paper_check() -> list[dict[str, Any]]:
    """The closed forms against PAPER.md's printed numbers for m=5, L=4."""
    from s3t.plan import deletion_rate_s3t, deletion_rate_sisa

    m, n = PAPER["m"], PAPER["L"]
    out = []
    for key, printed in PAPER["values"].items():
        value = deletion_rate_sisa(m, n) if key == "sisa" else deletion_rate_s3t(m, n, int(key))
        out.append({"case": "SISA" if key == "sisa" else f"S3T B={key}", "printed": printed,
                    "closed_form": value, "matches": round(value, 1) == printed})
    return out


def targets(rows: list[dict[str, Any]], paper: list[dict[str, Any]]) -> list[dict[str, Any]]:
    worst = max(rows, key=lambda r: abs(r["rel_error"]))
    within = sum(abs(r["rel_error"]) <= TOLERANCE for r in rows)
    return [
        {"target": "simulated deletion rates within 3% of the closed form",
         "measured": f"{within}/{len(rows)} plans within 3%; worst {100 * worst['rel_error']:+.2f}% "
                     f"(m={worst['m']} L={worst['L']} {worst['strategy']} B={worst['budget']})",
         "met": within == len(rows)},
        {"target": "closed form reproduces PAPER.md's m=5, L=4 example",
         "measured": ", ".join(f"{p['case']} {p['closed_form']:.1f} (printed {p['printed']})"
                               for p in paper),
         "met": all(p["matches"] for p in paper)},
    ]


def plot(rows: list[dict[str, Any]], quick: bool) -> None:
    """Left: m=5, L=4 rate against budget. Right: relative error of every plan."""
    plt = harness.pyplot()
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    ex = [r for r in rows if r["m"] == PAPER["m"] and r["L"] == PAPER["L"] and r["strategy"] == "cyclic"]
    bs = [r["budget"] for r in ex]
    ax.plot(bs, [r["closed_form"] for r in ex], "-", color="gray", label="closed form $m L H_{m B'}$")
    ax.errorbar(bs, [r["simulated"] for r in ex], yerr=[1.96 * r["simulated_sem"] for r in ex],
                fmt="o", capsize=3, label="simulated (95% CI)")
    sisa = [r for r in rows if r["m"] == PAPER["m"] and r["L"] == PAPER["L"] and r["strategy"] == "sisa"]
    if sisa:
        ax.plot([1], [sisa[0]["simulated"]], "rs", label="SISA simulated")
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.set_xlabel("budget B (cyclic orderings)")
    ax.set_ylabel("requests until retraining")
    ax.set_title(f"m={PAPER['m']}, L={PAPER['L']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    colors = {"sisa": "tab:red", "cyclic": "tab:blue", "bms": "tab:green", "random": "tab:purple"}
    for strategy, color in colors.items():
        mine = [r for r in rows if r["strategy"] == strategy]
        ax_err.plot([r["closed_form"] for r in mine], [100 * r["rel_error"] for r in mine], "o",
                    color=color, alpha=0.7, label=strategy)
    ax_err.axhspan(-100 * TOLERANCE, 100 * TOLERANCE, color="gray", alpha=0.15, label="+-3%")
    ax_err.set_xlabel("closed-form deletion rate")
    ax_err.set_ylabel("simulated / closed form - 1 (%)")
    ax_err.set_title("every plan simulated")
    ax_err.legend(fontsize=8)
    ax_err.grid(alpha=0.3)
    harness.save_plot(fig, NAME, quick)


def main(argv: list[str] | None = None) -> int:
    args = harness.parser(__doc__.splitlines()[0]).parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    rows = []
    plans = {(PAPER["m"], PAPER["L"], False)} | {(m, n, True) for m in size["grid_shards"]
                                                 for n in size["grid_slices"]}
    with harness.stopwatch() as t:
        for seed in seeds:
            for m, n, grid in sorted(plans, key=lambda p: (p[0], p[1], not p[2])):
                if grid is False and (m, n, True) in plans:
                    continue
                for strategy, budget in cases(m, n, grid):
                    rows.append(one(m, n, strategy, budget, size["trials"], seed))
                    r = rows[-1]
                    print(f"m={m:>2} L={n} {strategy:<6} B={budget:<3} B'={r['distinct_first_slices']} "
                          f"simulated {r['simulated']:7.2f} +- {r['simulated_sem']:.2f}  "
                          f"closed {r['closed_form']:7.2f}  ({100 * r['rel_error']:+.2f}%)", flush=True)
    paper = paper_check()
    checks = targets(rows, paper)
    for c in checks:
        print(f"{'MET' if c['met'] else 'NOT MET'}: {c['target']}: {c['measured']}")
    harness.write_result(NAME, args.quick, prov, {"rows": rows, "paper": paper, "targets": checks,
                                                 "seconds": t["s"]})
    plot(rows, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
