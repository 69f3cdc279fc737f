"""``s3t serve RUN``: the HTTP service (``s3t.service``) under uvicorn.

The token comes from ``--token-file`` or else the ``S3T_API_TOKEN`` environment variable;
without one the server refuses to listen anywhere but a loopback address (and there every
endpoint is open). The flags are checked and the run opened before the model loads, so a
mistake is one ``error:`` line, as in every other command.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from s3t.cli.errors import engine_errors, fail
from s3t.run import Run

TOKEN_ENV = "S3T_API_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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


def bind_port(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, before the model loads, so a busy port is one line at
    once (and the socket is handed to uvicorn: no other process can take it in between)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
    run: Annotated[Path, typer.Argument(help="Run directory (created by `s3t train`).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Without a token "
                    "only a loopback address is allowed.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (1..65535).")] = 8000,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="File holding the bearer "
                          f"token (default: the {TOKEN_ENV} environment variable). Deletions, "
                          "their listing and audit always need it; predict and generate unless "
                          "--open-predict.")] = None,
    open_predict: Annotated[bool, typer.Option("--open-predict", help="Serve predict and generate "
                            "without the token.")] = False,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Inputs per batched model call "
                         "(>= 1).")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a batch waits for "
                           "more requests, in milliseconds (>= 0).")] = 5.0,
    workers: Annotated[int, typer.Option("--workers", help="Model calls (batches) that run at "
                       "once (>= 1; 0: one per CPU core). One by default: on a small machine "
                       "concurrent calls slow deletions down (BENCHMARKS.md section 11).")] = 1,
    torch_threads: Annotated[int, typer.Option("--torch-threads", help="Torch threads per model "
                             "call (>= 1; 0: torch's default, one per CPU core). With several "
                             "--workers, 1 keeps a busy machine's cores from waiting on each "
                             "other.")] = 0,
    retrain: Annotated[str, typer.Option("--retrain", help="Background retraining: manual (only "
                       "POST /v1/retrain), eager (as soon as a deletion invalidated a stage) or "
                       "capacity:<threshold> (when capacity falls below it, e.g. "
                       "capacity:0.8). Stages serve as soon as each is retrained.")] = "manual",
    retrain_delay: Annotated[float, typer.Option("--retrain-delay", help="Seconds without a new "
                             "deletion before a policy retrain starts, so a burst of deletions "
                             "is retrained once (>= 0).")] = 0.0,
    log_format: Annotated[str, typer.Option("--log-format", help="Server log lines: text, or "
                          "json (one object per line); each carries its request's "
                          "X-Request-ID.")] = "text",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or "
                         "error.")] = "info",
) -> None:
    """Serve a run over HTTP: predictions, deletions, certificates, audit (OpenAPI at /docs)."""
    if not 1 <= port <= 65535:
        raise fail("--port", f"must be in 1..65535, got {port}")
    if max_batch < 1:
        raise fail("--max-batch", f"must be >= 1, got {max_batch}")
    if not max_wait_ms >= 0:
        raise fail("--max-wait-ms", f"must be >= 0, got {max_wait_ms}")
    if workers < 0:
        raise fail("--workers", f"must be >= 0, got {workers}")
    if torch_threads < 0:
        raise fail("--torch-threads", f"must be >= 0, got {torch_threads}")
    workers = workers or cpu_cores()
    from s3t.service.retrainer import RetrainPolicy  # lazily: the web stack loads with it

    try:
        RetrainPolicy.parse(retrain)
    except ValueError as exc:
        raise fail("--retrain", str(exc)) from None
    if not retrain_delay >= 0:
        raise fail("--retrain-delay", f"must be >= 0 seconds, got {retrain_delay}")
    from s3t.service.logs import FORMATS, LEVELS, log_config

    if log_format not in FORMATS:
        raise fail("--log-format", f"must be text or json, got {log_format!r}")
    if log_level.lower() not in LEVELS:
        raise fail("--log-level", f"must be one of {', '.join(LEVELS)}, got {log_level!r}")
    token = read_token(token_file)
    if token is None and not is_loopback(host):
        raise fail("--host", f"refusing to serve on {host} without a token: give --token-file "
                   f"or set {TOKEN_ENV} (without one, only a loopback host such as 127.0.0.1)")
    with engine_errors(run=run):
        opened = Run.open(run, repair=False)  # not a run, damaged, links: one line, no model load
        try:
            opened.signer()  # a signed run's deletions need its key (--signing-key): check now
        finally:
            opened.close()
    sock = bind_port(host, port)
    import uvicorn

    from s3t.service import create_app

    app = create_app(run, token=token, open_predict=open_predict, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, workers=workers, torch_threads=torch_threads or None,
                     retrain=retrain, retrain_delay_s=retrain_delay)
    if token is None:
        typer.echo(f"warning: no token: every endpoint is open to local users of {host}", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                                           log_config=log_config(log_format, log_level),
                                           access_log=False, proxy_headers=False,
                                           server_header=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # the run failed to load (the log above says why)
        raise typer.Exit(1)
