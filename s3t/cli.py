"""The ``s3t`` command line: one function per subcommand on a plain typer app."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from s3t.plan import (
    STRATEGIES,
    PrefixTree,
    deletion_rate,
    deletion_rate_s3t,
    distinct_first_slices,
    expected_prefix_length,
    first_shard_death,
    make_orderings,
    simulate,
    sisa_orderings,
)

MAX_CLI_SLICES = 12  # exact closed forms enumerate 2^L hit sets
MAX_CLI_BUDGET = 5040  # 7!: beyond this the simulation's memory and time grow too much
MAX_TRIALS = 1_000_000


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn usage errors into one ``error: ...`` line on stderr (exit 2), not a help box."""
    try:
        yield
    except typer.TyperException as exc:
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


class _OneLineErrorGroup(TyperGroup):
    def make_context(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with _one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        with _one_line_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_OneLineErrorGroup,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="s3t: exact machine unlearning with sequence-aware sharded sliced training (S3T).",
)


@app.callback()
def _main() -> None:
    """s3t: exact machine unlearning with sequence-aware sharded sliced training (S3T)."""


def _fail(option: str, message: str) -> typer.Exit:
    typer.echo(f"error: {option}: {message}", err=True)
    return typer.Exit(2)


def _parse_prior(text: str | None, n_slices: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail(
            "--prior", f"expected {n_slices} comma-separated probabilities, got {text!r}"
        ) from None
    if len(values) != n_slices:
        raise _fail(
            "--prior",
            f"expected {n_slices} comma-separated probabilities (one per slice), "
            f"got {len(values)}",
        )
    if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise _fail(
            "--prior", f"probabilities must be in [0, 1] and sum to 1 (within 1e-6), got {text}"
        )
    return values


def _default_budget(strategy: str, n_slices: int) -> int:
    if strategy == "sisa":
        return 1
    if strategy == "full":
        return math.factorial(n_slices)
    return n_slices


def _fmt(mean: float, std: float | None = None) -> str:
    if math.isinf(mean):
        return "inf"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} (sd {std:.1f})"


def _budget_curve(
    shards: int, slices: int, prior: list[float] | None, trials: int, seed: int, t: float
) -> dict:
    """Simulated and closed-form deletion rate against budget for the structured strategies."""
    top = min(math.factorial(slices), 2 * slices)
    budgets = list(range(1, top + 1))
    curves: dict[str, dict[str, list[float]]] = {}
    for strategy in ("cyclic", "bms", "random"):
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


def _plot(path: Path, curve: dict, shards: int, slices: int, uniform: bool) -> None:
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command("simulate")
def simulate_cmd(
    shards: Annotated[int, typer.Option("--shards", help="Number of shards m (>= 1).")],
    slices: Annotated[
        int, typer.Option("--slices", help=f"Slices per shard L (1..{MAX_CLI_SLICES}).")
    ],
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            help="Orderings per shard B (1..min(L!, 5040)); default L, 1 for sisa, L! for full.",
        ),
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", help="cyclic | bms | random | full | sisa.")
    ] = "cyclic",
    prior: Annotated[
        str | None,
        typer.Option("--prior", help="Deletion prior per slice, e.g. 0.1,0.4,0.4,0.1."),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="Monte Carlo trials.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (>= 0).")] = 0,
    t: Annotated[float, typer.Option("--t", help="BMS score exponent (> 0).")] = 100.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of deletion rate vs budget.")
    ] = None,
) -> None:
    """Simulate deletions against a plan and compare with the closed forms and SISA."""
    if shards < 1:
        raise _fail("--shards", f"must be >= 1, got {shards}")
    if not 1 <= slices <= MAX_CLI_SLICES:
        raise _fail("--slices", f"must be in [1, {MAX_CLI_SLICES}], got {slices}")
    if strategy not in STRATEGIES:
        raise _fail("--strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if budget is None:
        budget = _default_budget(strategy, slices)
    top = min(math.factorial(slices), MAX_CLI_BUDGET)
    if strategy == "sisa" and budget != 1:
        raise _fail("--budget", f"must be 1 for --strategy sisa, got {budget}")
    if strategy == "full" and budget != math.factorial(slices):
        raise _fail(
            "--budget",
            f"must be {math.factorial(slices)} (= slices!) for --strategy full, got {budget}",
        )
    if not 1 <= budget <= top:
        raise _fail(
            "--budget", f"must be in [1, {top}] (min(slices!, {MAX_CLI_BUDGET})), got {budget}"
        )
    if not 1 <= trials <= MAX_TRIALS:
        raise _fail("--trials", f"must be in [1, {MAX_TRIALS}], got {trials}")
    if seed < 0:
        raise _fail("--seed", f"must be >= 0, got {seed}")
    if not (math.isfinite(t) and t > 0):
        raise _fail("--t", f"must be a finite number > 0, got {t}")
    prior_values = _parse_prior(prior, slices)
    if plot is not None and not plot.parent.is_dir():
        raise _fail("--plot", f"directory {str(plot.parent)!r} does not exist")

    orderings = make_orderings(strategy, slices, budget, prior=prior_values, t=t, seed=seed)
    sisa = sisa_orderings(slices)
    checkpoints = (shards, 2 * shards, shards * slices, 2 * shards * slices)
    try:
        s3t_res = simulate(shards, slices, orderings, prior_values, trials, seed, checkpoints)
        sisa_res = simulate(shards, slices, sisa, prior_values, trials, seed, checkpoints)
    except ValueError as exc:
        raise _fail("--prior", str(exc)) from None
    tree = PrefixTree.from_orderings(orderings)
    report = {
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
        "deletion_rate_closed_form": deletion_rate(shards, orderings, prior_values),
        "deletion_rate_paper_formula": deletion_rate_s3t(shards, slices, min(budget, slices)),
        "first_shard_death": s3t_res.first_shard_death,
        "first_shard_death_std": s3t_res.first_shard_death_std,
        "first_shard_death_closed_form": first_shard_death(shards, orderings, prior_values),
        "sisa_deletion_rate": sisa_res.deletion_rate,
        "sisa_deletion_rate_std": sisa_res.deletion_rate_std,
        "sisa_deletion_rate_closed_form": deletion_rate(shards, sisa, prior_values),
        "sisa_first_shard_death": sisa_res.first_shard_death,
        "sisa_first_shard_death_closed_form": first_shard_death(shards, sisa, prior_values),
        "checkpoints": list(checkpoints),
        "mean_prefix_length": list(s3t_res.mean_prefix_length),
        "mean_prefix_length_closed_form": [
            expected_prefix_length(shards, orderings, r, prior_values) for r in checkpoints
        ],
        "sisa_mean_prefix_length": list(sisa_res.mean_prefix_length),
        "sisa_mean_prefix_length_closed_form": [
            expected_prefix_length(shards, sisa, r, prior_values) for r in checkpoints
        ],
        "stages": shards * tree.count(),
        "stages_without_sharing": shards * tree.count_without_sharing(),
        "stages_per_shard": tree.count(),
        "sisa_stages": shards * slices,
        "training_cost_per_shard_sample": tree.training_cost(1),
        "training_cost_per_shard_sample_without_sharing": tree.training_cost(1, sharing=False),
    }
    if plot is not None:
        curve = _budget_curve(shards, slices, prior_values, trials, seed, t)
        try:
            _plot(plot, curve, shards, slices, uniform=prior_values is None)
        except OSError as exc:
            raise _fail("--plot", f"cannot write {plot}: {exc.strerror or exc}") from None
        report["plot"] = str(plot)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(_table(report))


def _table(rep: dict) -> str:
    """Plain-text report: S3T vs SISA, simulated vs closed form."""
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


if __name__ == "__main__":  # pragma: no cover
    app()
