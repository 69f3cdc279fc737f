"""The ``s3t`` command line: a plain typer app and the registration of its commands.

Each command group lives in a module of its own and only parses flags and prints
(``errors.py``: one-line errors; ``inputs.py``: parsing and early checks of what it is given;
``fields.py``: options made from the fields of ``S3TConfig`` and serve's ``Settings``).
Planning lives in ``s3t.plan``; the run configuration is documented and checked by
``S3TConfig``, whose ``ConfigError`` names a config field that ``train.CONFIG_FLAGS`` maps back
to its flag.
"""

from __future__ import annotations

import typer

from s3t.cli.certificates import certificates_cmd
from s3t.cli.configure import configure_cmd
from s3t.cli.errors import OneLineErrorGroup
from s3t.cli.lifecycle import audit_cmd, forget_cmd, retrain_cmd, status_cmd
from s3t.cli.operations import register
from s3t.cli.plan import plan_cmd
from s3t.cli.predict import generate_cmd, predict_cmd
from s3t.cli.serve import serve_cmd
from s3t.cli.simulate import simulate_cmd
from s3t.cli.train import demo_cmd, train_cmd
from s3t.cli.verify import verify_cmd

app = typer.Typer(cls=OneLineErrorGroup, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="s3t: exact machine unlearning with sequence-aware "
                  "sharded sliced training (S3T).")


@app.callback()
def _main() -> None:
    """s3t: exact machine unlearning with sequence-aware sharded sliced training (S3T)."""


# The order here is the order of `s3t --help`.
app.command("simulate")(simulate_cmd)  # planning only: cli/simulate.py
app.command("plan")(plan_cmd)  # m, L, B and retrain policy for a deletion rate: cli/plan.py
app.command("train")(train_cmd)  # options made from S3TConfig's fields: cli/train.py
app.command("predict")(predict_cmd)  # labels from the live shards: cli/predict.py
app.command("generate")(generate_cmd)  # instruction-tuned runs: cli/predict.py
app.command("forget")(forget_cmd)  # exact deletion and its certificate: cli/lifecycle.py
app.command("retrain")(retrain_cmd)  # cli/lifecycle.py
app.command("status")(status_cmd)  # cli/lifecycle.py
app.command("audit")(audit_cmd)  # the exactness invariant re-checked: cli/lifecycle.py
app.command("serve")(serve_cmd)  # the HTTP service: cli/serve.py, s3t/service
app.command("verify")(verify_cmd)  # retrain-and-compare: cli/verify.py, s3t/verify.py
app.command("certificates")(certificates_cmd)  # the deletion log: cli/certificates.py
app.command("configure")(configure_cmd)  # serving choices of a trained run: cli/configure.py
app.command("demo")(demo_cmd)  # end to end on WordNet: cli/train.py, s3t/demo.py
register(app)  # keys, backup, restore; --signing-key on train/forget/retrain: cli/operations.py
