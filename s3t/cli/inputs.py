"""Parsing and checking what the command line is given, before any model or data loads; the
arguments and options commands share (``--json``, the run directory) and their printing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from s3t.cli.errors import fail as _fail
from s3t.plan.orderings import default_budget

#: The ``--json`` flag every command that prints a result shares.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
#: The run directory argument of the commands that work on a run.
RunArg = Annotated[Path, typer.Argument(help="Run directory (created by `s3t train`).")]


def emit(as_json: bool, payload: dict, text: str) -> None:
    """Print a command's result: the payload as one JSON object (``--json``), else the text."""
    typer.echo(json.dumps(payload, default=str) if as_json else text)


def parse_prior(text: str | None, n_slices: int) -> list[float] | None:
    """Only the parsing: the probabilities are checked with the plan (or the config)."""
    try:
        return None if text is None else [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail("--prior", f"expected {n_slices} comma-separated probabilities, "
                    f"got {text!r}") from None


def budget(budget: int | None, strategy: str, slices: int) -> int:
    return default_budget(strategy, slices) if budget is None else budget


def csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def read_keys(source: str, option: str) -> list[str]:
    """Sample ids or group keys from a file (``-``: standard input), kept exactly as written:
    a JSON list of strings if the text starts with ``[``, else one per line (only the line
    ending is removed; empty lines are skipped)."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8", newline="") as fh:
                text = fh.read()
    except OSError as exc:
        raise _fail(option, f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _fail(option, f"{source} is not UTF-8 text") from None
    text = text.removeprefix("\ufeff")
    if text.startswith("["):
        try:
            keys = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(option, f"{source} starts with `[` but is not a JSON list ({exc.msg}, "
                        f"line {exc.lineno})") from None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _fail(option, f"{source}: expected a JSON list of strings")
        return [k for k in keys if k]
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line]


def keys(text: str | None, file: str | None, option: str) -> list[str]:
    return csv(text) + (read_keys(file, option) if file is not None else [])


def check_eval_size(eval_size: float) -> None:
    if not math.isfinite(eval_size) or eval_size < 0 or (eval_size >= 1
                                                         and not eval_size.is_integer()):
        raise _fail("--eval-size", "must be 0 (no split), a fraction in (0, 1) or a whole "
                    f"number of samples >= 1, got {eval_size:g}")


def check_out(out: Path) -> bool:
    """``--out`` must be a new or an empty directory; return whether it exists already."""
    from s3t.run import Run

    for path in (out, *out.parents):  # the nearest existing one must be a directory
        if path.exists():
            if not path.is_dir():
                raise _fail("--out", f"{path} is a file, not a directory" if path == out else
                            f"cannot create {out}: {path} is a file, not a directory")
            break
    if not out.is_dir():
        return False
    try:
        Run.refuse_existing(out)
    except FileExistsError as err:
        raise _fail("--out", str(err)) from None
    if any(out.iterdir()):
        raise _fail("--out", f"{out} exists and is not empty (and is not an s3t run): choose a "
                    "new or empty directory")
    return True


def check_classes(train: Any) -> None:
    """A classifier needs samples of at least two labels to learn anything."""
    if train.labels is None or len(set(train.labels)) >= 2:
        return
    names = train.label_names
    only = [names[y] if 0 <= y < len(names) else str(y) for y in set(train.labels)]
    raise _fail("--data", f"the training data has a single class ({', '.join(only)}): a "
                "classifier needs samples of at least two labels")
