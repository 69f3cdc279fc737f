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
) -> None:
    """Simulate deletions against a plan and compare with the closed forms and SISA."""
    prior_values = inputs.parse_prior(prior, slices)
    args = (shards, slices, budget, strategy, prior_values, trials, seed, t)
    try:
        plan_report.check_simulation(*args)  # every flag before --plot's folder and any work
        if plot is not None and not plot.parent.is_dir():
            raise fail("--plot", f"directory {str(plot.parent)!r} does not exist")
        report = plan_report.simulation_report(*args)
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
    typer.echo(json.dumps(report) if as_json else plan_report.format_report(report))
