"""``s3t simulate``: how many deletions a plan absorbs, by simulation and closed form, before
any run exists (planning only: no model, no run directory)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from s3t.cli import inputs
from s3t.cli.errors import fail
from s3t.plan import report as plan_report
from s3t.plan.placement import parse_skew
from s3t.plan.placement_sim import simulate_placement


def simulate_cmd(
    shards: Annotated[int, typer.Option("--shards", help="Number of shards m (>= 1).")],
    slices: Annotated[int, typer.Option(
        "--slices", help=f"Slices per shard L (1..{plan_report.MAX_SLICES}).")],
    budget: Annotated[int | None, typer.Option("--budget", help="Orderings per shard B (1..min(L!, "
                      f"{plan_report.MAX_BUDGET})); default L, 1 for sisa, L! for full.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="cyclic | bms | random | full | sisa.")]
    = "cyclic",
    prior: Annotated[str | None, typer.Option("--prior", help="Deletion prior per slice, e.g. "
                     "0.1,0.4,0.4,0.1.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Monte Carlo trials.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (>= 0).")] = 0,
    t: Annotated[float, typer.Option("--t", help="BMS score exponent (> 0).")] = 100.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing "
                       "else.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of deletion rate vs "
                    "budget.")] = None,
    placement: Annotated[str, typer.Option("--placement", help="prior: also compare placement "
                         "by deletion likelihood with uniform placement on a stream of users "
                         "(stages invalidated per deletion).")] = "uniform",
    skew: Annotated[str, typer.Option("--skew", help="With --placement prior: which users are "
                    "deleted, uniform or zipf:S (e.g. zipf:1.1).")] = "zipf:1.1",
    users: Annotated[int, typer.Option("--users", help="With --placement prior: users (groups "
                     "of 2 samples).")] = 1000,
    deletions: Annotated[int, typer.Option("--deletions", help="With --placement prior: users "
                         "deleted per trial.")] = 100,
    window: Annotated[int | None, typer.Option("--window", help="With --placement prior: "
                      "retrain every this many deletions (default: when no shard serves).")]
    = None,
    history: Annotated[int, typer.Option("--history", help="With --placement prior: past "
                       "requests the priors are estimated from (0: the true likelihoods).")] = 0,
) -> None:
    """Simulate deletions against a plan and compare with the closed forms and SISA."""
    prior_values = inputs.parse_prior(prior, slices)
    args = (shards, slices, budget, strategy, prior_values, trials, seed, t)
    try:
        plan_report.check_simulation(*args)  # every flag before --plot's folder and any work
        if plot is not None and not plot.parent.is_dir():
            raise fail("--plot", f"directory {str(plot.parent)!r} does not exist")
        report = plan_report.simulation_report(*args)
        if placement not in ("uniform", "prior"):
            raise fail("--placement", f"must be uniform or prior, got {placement!r}")
        if placement == "prior":
            report["placement"] = _placement(shards, slices, report["budget"], strategy, skew,
                                             users, deletions, window, history, seed)
        if plot is not None:
            curve = plan_report.budget_curve(shards, slices, prior_values, trials, seed, t)
            plan_report.plot_budget_curve(plot, curve, shards, slices, uniform=prior is None)
            report["plot"] = str(plot)
    except plan_report.SimulationArgumentError as exc:
        raise fail(f"--{exc.parameter}", exc.reason) from None
    except ValueError as exc:  # a prior under which some shard can never die
        raise fail("--prior", str(exc)) from None
    except OSError as exc:
        raise fail("--plot", f"cannot write {plot}: {exc.strerror or exc}") from None
    text = plan_report.format_report(report)
    if "placement" in report:
        text += "\n" + format_placement(report["placement"])
    typer.echo(json.dumps(report) if as_json else text)


def _placement(shards: int, slices: int, budget: int, strategy: str, skew: str, users: int,
               deletions: int, window: int | None, history: int, seed: int) -> dict:
    try:
        exponent = parse_skew(skew)
    except ValueError as exc:
        raise fail("--skew", str(exc)) from None
    try:
        return simulate_placement(shards, slices, budget, strategy, users=users, skew=exponent,
                                  deletions=deletions, window=window, history=history, seed=seed)
    except ValueError as exc:
        option = str(exc).split(" ", 1)[0]
        raise fail(f"--{option}" if option in ("users", "deletions", "window", "history")
                   else "--placement", str(exc)) from None


def format_placement(res: dict) -> str:
    """The placement comparison as text."""
    u, p = res["uniform"], res["prior"]
    when = f"every {res['window']} deletions" if res["window"] else "when no shard serves"
    return "\n".join([
        f"placement by prior, Zipf({res['skew']:g}) stream over {res['users']} users, "
        f"{res['deletions']} deletions x {res['trials']} trials, retrain {when}:",
        f"  stages invalidated per deletion: uniform {u['stages_invalidated_per_deletion']:.3f}, "
        f"prior {p['stages_invalidated_per_deletion']:.3f} ({res['stages_cut']:+.0%} cut)",
        f"  served depth fraction: uniform {u['served_depth_fraction']:.3f}, prior "
        f"{p['served_depth_fraction']:.3f}; slice prior {[round(x, 3) for x in p['slice_prior']]}",
    ])
