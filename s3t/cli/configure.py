"""``s3t configure RUN``: change how a trained run serves, without retraining.

Only serving choices live here (``--serve-orderings``, ``--ensemble``): every live stage is
exact whichever of them serve and however the shards are weighed, so the run card is
rewritten (atomically, under the writer lock) and nothing else changes. A running ``s3t
serve`` (or any process with the run open) serves the new way from its next request on: it
follows the card (``Run.follow_card``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s3t.cli.errors import engine_errors
from s3t.cli.inputs import JsonOpt, RunArg
from s3t.config import SERVING_FIELDS, config_help
from s3t.run import Run

FLAGS = {"serve_orderings": "--serve-orderings", "ensemble": "--ensemble"}


def configure_cmd(
    run: RunArg,
    serve_orderings: Annotated[str | None, typer.Option(
        FLAGS["serve_orderings"], help="What the run serves from now on, without retraining. "
        + config_help("serve_orderings"))] = None,
    ensemble: Annotated[str | None, typer.Option(
        FLAGS["ensemble"], help="How the shards are weighed from now on, without retraining. "
        + config_help("ensemble"))] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change how a trained run serves (no retraining); a running `s3t serve` follows from
    its next request."""
    wanted = {k: v for k, v in (("serve_orderings", serve_orderings), ("ensemble", ensemble))
              if v is not None}
    if not wanted:
        raise typer.BadParameter("name what to change: --serve-orderings and/or --ensemble")
    with engine_errors(FLAGS, run=run):
        opened = Run.open(run)
        try:
            before = {k: getattr(opened.config, k) for k in SERVING_FIELDS}
            changed = opened.set_serving(**wanted)
        finally:
            opened.close()
    if list(wanted) == ["serve_orderings"]:  # the record as before --ensemble existed
        payload: dict = {"run_dir": str(run), "serve_orderings": serve_orderings,
                         "previous": before["serve_orderings"], "changed": changed}
    else:
        payload = {"run_dir": str(run), **wanted, "previous": before, "changed": changed}
    said = ", ".join(f"{k} {before[k]} -> {v}" for k, v in wanted.items())
    text = (f"{run}: {said}; a running `s3t serve` serves this way from its next request"
            if changed else f"{run}: {', '.join(f'{k} is already {v}' for k, v in wanted.items())}"
            "; nothing changed")
    typer.echo(json.dumps(payload) if as_json else text)
