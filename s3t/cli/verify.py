"""``s3t verify RUN``: retrain stages from the run's retained data in a fresh temporary
directory and compare them bit for bit with the run's stage files (``s3t.verify``).

Exit status 0 only if every checked stage is identical, 1 if any differs (or is damaged or
stale), 2 for a bad request (unknown or erased stage, nothing live, another backbone).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s3t.cli.errors import engine_errors, fail
from s3t.cli.inputs import JsonOpt, RunArg


def verify_cmd(
    run: RunArg,
    stages: Annotated[str | None, typer.Option(
        "--stages", help="Stage keys to check, comma-separated (their ancestors are retrained "
        "and checked too); see `s3t status`.")] = None,
    served: Annotated[bool, typer.Option(
        "--served", help="Check the stages that serve now: each live route's chain (the "
        "default).")] = False,
    every: Annotated[bool, typer.Option("--all", help="Check every live stage.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Retrain stages from scratch on the retained data and compare every tensor bitwise with
    the run's files; exit 0 only if all are identical."""
    if sum((stages is not None, served, every)) > 1:
        raise fail("--stages/--served/--all", "give at most one of them")
    which: str | list[str] = "all" if every else "served"
    if stages is not None:
        which = [k.strip() for k in stages.split(",") if k.strip()]
        if not which:
            raise fail("--stages", "give at least one stage key, e.g. --stages 0-0v0")
    with engine_errors(run=run):
        from s3t.verify import verify_run

        report = verify_run(run, which, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        width = max(len(s.key) for s in report.stages)
        for check in report.stages:
            typer.echo(f"{check.key:<{width}}  depth {check.depth}  {check.describe()}")
        same = sum(s.identical for s in report.stages)
        verdict = "all identical" if report.ok else f"{len(report.stages) - same} NOT identical"
        env = report.environment
        typer.echo(f"verified {len(report.stages)} stages ({report.selection}) in "
                   f"{report.seconds:.1f} s: {verdict} ({env.get('torch_threads')} torch "
                   f"thread(s), {env.get('device')}, deterministic {env.get('deterministic')})")
    if not report.ok:
        raise typer.Exit(1)
