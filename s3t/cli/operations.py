"""Operations on runs outside training and serving: signing keys (``s3t keys new|attach``),
``s3t backup`` and ``s3t restore``, and the ``--signing-key`` option of the commands that
write a run (train, forget, retrain, serve) (``register`` adds all of it to the app in one call).

The private key is never stored in the run: ``--signing-key FILE`` (or ``S3T_SIGNING_KEY``)
is put in this process's environment for the command's duration, where the run reads it when
it writes (``Run.signer``) and where child processes (a server's retrain jobs) inherit it.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from s3t.cli.errors import engine_errors, fail
from s3t.cli.inputs import JsonOpt
from s3t.run import Run
from s3t.run.signing import ENV, SigningKeyError, key_id, load_signer, new_key, public_file

SigningKeyOpt = Annotated[Path | None, typer.Option(
    "--signing-key", envvar=ENV, help="The run's Ed25519 private key (made by `s3t keys new`), "
    "kept outside the run directory: every certificate and stage record written is signed "
    "with it; a run created with it records its public key. Required to write a run whose "
    "card names a key.")]

keys_app = typer.Typer(help="Signing keys: make one; attach one to an existing run.",
                       add_completion=False, rich_markup_mode=None)


@contextmanager
def signing_key(path: Path | None) -> Iterator[None]:
    """Make ``path`` the signing key of this process (and its children) while in the block."""
    before = os.environ.get(ENV)
    if path is not None:
        os.environ[ENV] = str(path.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def with_signing_key(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with a ``--signing-key`` option added."""
    @functools.wraps(command)
    def wrapper(*args: Any, signing_key_file: Path | None = None, **kwargs: Any) -> Any:
        with signing_key(signing_key_file):
            return command(*args, **kwargs)

    signature = inspect.signature(command, eval_str=True)  # typer reads the annotations
    extra = inspect.Parameter("signing_key_file", inspect.Parameter.KEYWORD_ONLY,
                              default=None, annotation=SigningKeyOpt)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), extra])
    wrapper.__annotations__ = {**command.__annotations__, "signing_key_file": SigningKeyOpt}
    return wrapper


@keys_app.command("new")
def keys_new_cmd(
    file: Annotated[Path, typer.Argument(help="Where to write the private key (mode 0600; "
                                         "never over an existing file); the public key goes "
                                         "to FILE.pub. Keep it outside every run directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Make a new Ed25519 signing key."""
    try:
        signer = new_key(file)
    except (SigningKeyError, OSError) as err:
        raise fail("FILE", str(err)) from None
    payload = {"private_key": str(file), "public_key_file": str(public_file(file)),
               "public_key": signer.public, "key_id": key_id(signer.public)}
    typer.echo(json.dumps(payload) if as_json else
               f"private key {file} (keep it secret, outside the run)\npublic key "
               f"{public_file(file)}: {signer.public}\nkey id {key_id(signer.public)}")


@keys_app.command("attach")
def keys_attach_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory without a signing key.")],
    signing_key_file: Annotated[Path, typer.Option(
        "--signing-key", envvar=ENV, help="The private key to sign the run's records with.")],
    as_json: JsonOpt = False,
) -> None:
    """Give an unsigned run a signing key: after an audit that passes, sign its live stages
    and its certificates as they are, and record the public key in the run card."""
    from s3t.run.proof import attach_key
    from s3t.run.signing import check_outside

    with engine_errors(run=run):
        check_outside(signing_key_file, run)
        signer = load_signer(signing_key_file)
        opened = Run.open(run)
        try:
            result = attach_key(opened, signer)
        finally:
            opened.close()
    typer.echo(json.dumps(result) if as_json else
               f"{run} now signs with key {result['key_id']}: {result['stages_signed']} stages "
               f"and {result['certificates_signed']} certificates signed")


def backup_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (it may be serving).")],
    dest: Annotated[Path, typer.Argument(help="New or empty directory for the backup.")],
    as_json: JsonOpt = False,
) -> None:
    """Write a consistent snapshot of a run (ledger, stage files, certificates, card, chain
    head) while it serves. Restore it with `s3t restore BACKUP NEWRUN --replay FROM`."""
    from s3t.run.backup import backup

    with engine_errors(run=run):
        opened = Run.open(run, repair=False)
        try:
            result = backup(opened, dest)
        finally:
            opened.close()
    head = result["chain_head"] or {}
    typer.echo(json.dumps(result) if as_json else
               f"backup of {run} in {dest}: {result['live_stages']} live stages, chain head "
               f"#{head.get('sequence')}")


def restore_cmd(
    backup_dir: Annotated[Path, typer.Argument(help="A directory `s3t backup` wrote.")],
    new_run: Annotated[Path, typer.Argument(help="New run directory to create.")],
    replay: Annotated[Path | None, typer.Option(
        "--replay", help="Where the deletions made after the backup are recorded: the damaged "
        "run's certificates folder or an export (`s3t certificates RUN --export DIR`). Each "
        "is applied again before the restored run appears.")] = None,
    no_replay: Annotated[bool, typer.Option(
        "--no-replay", help="Restore without replaying (deleted samples may come back); the "
        "certificate chain records the gap.")] = False,
    signing_key_file: SigningKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup as a new run, re-applying every deletion recorded after it."""
    from s3t.run.backup import restore

    if replay is not None and no_replay:
        raise fail("--replay/--no-replay", "give one of them, not both")
    with engine_errors(run=backup_dir):  # a refused restore: one line, exit 2, nothing made
        result = restore(backup_dir, new_run, replay, no_replay,
                         None if signing_key_file is None else str(signing_key_file))
    typer.echo(json.dumps(result) if as_json else
               f"restored {backup_dir} as {new_run}: {result['replayed']} deletions re-applied "
               f"({result['samples_deleted_again']} samples)"
               + ("" if replay is not None else "; GAP recorded: deletions after the backup "
                  "were not re-applied"))


def register(app: typer.Typer, signed: tuple[str, ...] = ("train", "forget", "retrain",
                                                             "serve")) -> None:
    """Add ``keys``, ``backup`` and ``restore`` to ``app`` and ``--signing-key`` to the
    commands that write a run."""
    for info in app.registered_commands:
        if info.name in signed and info.callback is not None:
            info.callback = with_signing_key(info.callback)
    app.add_typer(keys_app, name="keys")
    app.command("backup")(backup_cmd)
    app.command("restore")(restore_cmd)
