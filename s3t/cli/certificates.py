"""``s3t certificates RUN``: the deletion log (one line per certificate, oldest first), whether
its hash chain is intact, and ``--export DIR`` to hand it to an auditor; ``--verify`` checks
every signature and the chain offline, of a run or of an export (``s3t.run.proof``).

Exit status 0 when the chain is intact, 1 when it is broken (the listing and any export are
still written), 2 for a bad request (e.g. an export directory that is not empty).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from s3t.cli.errors import engine_errors
from s3t.cli.inputs import JsonOpt
from s3t.run import Run


def certificates_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (created by `s3t train`); with "
                                        "--verify also an --export copy.")],
    export: Annotated[Path | None, typer.Option(
        "--export", help="Also write every certificate (<request-id>.json) and chain.json (the "
        "order, each certificate's sha256, the head) into this new or empty directory, for an "
        "auditor to keep; a later export's chain must extend it.")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check every signature (certificates and, in a run, live stage "
        "records) and the hash chain offline; exit 0 only if all hold.")] = False,
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="With --verify: the run's public key as you keep it (FILE.pub of "
        "`s3t keys new`); default: the key the run card or the export names.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the deletion certificates and check their hash chain; exit 0 only if it is intact."""
    if verify:
        return _verify(run, public_key, as_json)
    with engine_errors(run=run):
        opened = Run.open(run, repair=False)
        try:
            summary = opened.certificates() if export is None else \
                opened.export_certificates(export)
        finally:
            opened.close()
    if export is not None:
        summary = {**summary, "exported_to": str(export)}
    typer.echo(json.dumps(summary) if as_json else _text(summary))
    if not summary["intact"]:
        raise typer.Exit(1)


def _verify(source: Path, public_key: Path | None, as_json: bool) -> None:
    from s3t.run.card import RUN_FILE
    from s3t.run.proof import verify_export, verify_run
    from s3t.run.signing import load_public

    with engine_errors(run=source):
        public = None if public_key is None else load_public(public_key)
        if (source / RUN_FILE).exists():
            opened = Run.open(source, repair=False)
            try:
                summary = verify_run(opened, public)
            finally:
                opened.close()
        else:
            summary = verify_export(source, public)
    if as_json:
        typer.echo(json.dumps(summary))
    elif summary["intact"]:
        typer.echo(f"verified: {summary['certificates']} certificates and {summary['stages']} "
                   f"stage records of {summary['kind']} {source} are signed by key "
                   f"{summary['key_id']} and the chain is intact")
    else:
        typer.echo("verification FAILED:\n  " + "\n  ".join(summary["problems"]))
    if not summary["intact"]:
        raise typer.Exit(1)


def _text(summary: dict) -> str:
    lines = [f"#{c['sequence']} {c['request_id']} {c['time']}: {c['samples']} samples, "
             f"{c['groups']} groups, {c['erased_stages']} stages erased; sha256 {c['sha256']}"
             for c in summary["certificates"]]
    head = summary["head"] or {}
    if summary["intact"]:
        lines.append(f"chain intact: {len(summary['certificates'])} certificates, head "
                     f"#{head.get('sequence')} sha256 {head.get('sha256')}")
    else:
        lines.append("chain BROKEN:\n  " + "\n  ".join(summary["problems"]))
    if summary.get("exported_to"):
        lines.append(f"exported to {summary['exported_to']}")
    return "\n".join(lines)
