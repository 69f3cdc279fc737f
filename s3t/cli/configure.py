"""``s3t configure RUN``: change how a trained run serves, without retraining.

Only serving choices live here (today ``--serve-orderings``): every live stage is exact
whichever of them serve, so the run card is rewritten (atomically, under the writer lock) and
nothing else changes. A running ``s3t serve`` (or any process with the run open) serves the
new way from its next request on: it follows the card (``Run.follow_card``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s3t.cli.errors import engine_errors
from s3t.cli.inputs import JsonOpt, RunArg
from s3t.config import config_help
from s3t.run import Run

FLAGS = {"serve_orderings": "--serve-orderings"}


def configure_cmd(
    run: RunArg,
    serve_orderings: Annotated[str, typer.Option(
        FLAGS["serve_orderings"], help="What the run serves from now on, without retraining. "
        + config_help("serve_orderings"))],
    as_json: JsonOpt = False,
) -> None:
    """Change how a trained run serves (no retraining); a running `s3t serve` follows from
    its next request."""
    with engine_errors(FLAGS, run=run):
        opened = Run.open(run)
        try:
            before = opened.config.serve_orderings
            changed = opened.set_serve_orderings(serve_orderings)
        finally:
            opened.close()
    payload = {"run_dir": str(run), "serve_orderings": serve_orderings, "previous": before,
               "changed": changed}
    text = (f"{run}: serve_orderings {before} -> {serve_orderings}; a running `s3t serve` "
            "serves this way from its next request" if changed
            else f"{run}: serve_orderings is already {serve_orderings}; nothing changed")
    typer.echo(json.dumps(payload) if as_json else text)
