"""``s3t serve RUN``: the HTTP service (``s3t.service``) under uvicorn.

Its options are made (``s3t/cli/fields.py``) from the fields of
``s3t.service.settings.Settings`` (flag, help and default in each field's metadata), which
also checks them: one definition, one validation.
The token comes from ``--token-file`` or else the ``S3T_API_TOKEN`` environment variable;
without one the server refuses to listen anywhere but a loopback address (and there every
endpoint is open). The flags are checked and the run opened before the model loads, so a
mistake is one ``error:`` line, as in every other command.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from s3t.cli.errors import engine_errors, fail
from s3t.cli.fields import Adjust, field_options, with_options
from s3t.cli.inputs import RunArg
from s3t.run import Run
from s3t.service.settings import CALLBACK_SECRET_ENV, TOKEN_ENV, Settings, SettingsError

# What the command line does differently from a field: a tuple is a repeatable option.
ADJUST = {"cors_origins": Adjust(kind=list[str] | None, default=None),
          "callback_allow": Adjust(kind=list[str] | None, default=None)}


def read_token(token_file: Path | None) -> str | None:
    if token_file is None:
        token = os.environ.get(TOKEN_ENV)
        if token is not None and not token.strip():
            raise fail(TOKEN_ENV, "is set but empty")
        return None if token is None else token.strip()
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail("--token-file", f"cannot read {token_file}: {exc}") from None
    if not token or any(c.isspace() for c in token):
        raise fail("--token-file", f"{token_file} must hold one token (no spaces), got "
                   f"{'nothing' if not token else 'several words'}")
    return token


def read_callback_secret(path: Path | None) -> str | None:
    """The secret that signs erasure callbacks: the file's text, else the environment's."""
    if path is None:
        secret = os.environ.get(CALLBACK_SECRET_ENV)
        return None if secret is None else secret.strip()
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail("--callback-secret-file", f"cannot read {path}: {exc}") from None


def bind_port(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, before the model loads, so a busy port is one line at
    once (and the socket is handed to uvicorn: no other process can take it in between)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: a connection accepted from it inherits it, and asyncio turns Nagle's
    # algorithm off (TCP_NODELAY) only on sockets whose proto is TCP. With proto 0 every
    # answer (headers and body: two writes) waited for the client's delayed ACK, ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise fail("--port", f"{host}:{port} is already in use (another server?): stop it "
                       "or choose another --port") from None
        raise fail("--host", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve_cmd(
    run: RunArg,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding the bearer token (default: the "
        f"{TOKEN_ENV} environment variable). Every route but health, readiness and the page "
        "needs it, unless --open-predict or --open-status opens some.")] = None,
    callback_secret_file: Annotated[Path | None, typer.Option(
        "--callback-secret-file", help="File holding the secret that signs erasure status "
        "callbacks (HMAC-SHA256) on a run without a signing key (default: the "
        f"{CALLBACK_SECRET_ENV} environment variable).")] = None,
    **values: Any,
) -> None:
    """Serve a run over HTTP: predictions, deletions, certificates, audit (OpenAPI at /docs)."""
    values["cors_origins"] = tuple(values.get("cors_origins") or ())
    values["callback_allow"] = tuple(values.get("callback_allow") or ())
    token = read_token(token_file)
    secret = read_callback_secret(callback_secret_file)
    try:
        settings = Settings(run_dir=run, token=token, callback_secret=secret, **values).check()
    except SettingsError as exc:
        raise fail(exc.flag, str(exc).removeprefix(exc.flag + ": ")) from None
    with engine_errors(run=run):
        opened = Run.open(run, repair=False)  # not a run, damaged, links: one line, no model load
        try:
            opened.signer()  # a signed run's deletions need its key (--signing-key): check now
        finally:
            opened.close()
    sock = bind_port(settings.host, settings.port)
    import uvicorn

    from s3t.service import create_app
    from s3t.service.logs import log_config

    app = create_app(settings)
    if token is None:
        typer.echo(f"warning: no token: every endpoint is open to local users of "
                   f"{settings.host}", err=True)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_format, settings.log_level), access_log=False,
        proxy_headers=False, server_header=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # the run failed to load (the log above says why)
        raise typer.Exit(1)


with_options(serve_cmd, field_options(Settings, adjust=ADJUST), before=None)
