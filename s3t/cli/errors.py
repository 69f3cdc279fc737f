"""One-line errors for the command line: usage errors and library exceptions become
``error: ...`` on stderr with exit status 2 (bad input), 1 (refused state), or the status of
a fault of the run's files (3 read-only, 4 permission denied, 5 disk full, 6 file missing,
7 ledger damaged, 8 ledger swapped or behind its certificates), never a traceback. Which
exception means what is ``s3t.errors``' table, shared with the HTTP service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from s3t.config import ConfigError
from s3t.errors import describe


def fail(option: str, message: str) -> typer.Exit:
    typer.echo(f"error: {option}: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn usage errors into one ``error: ...`` line on stderr (exit 2), not a help box."""
    try:
        yield
    except typer.TyperException as exc:
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


class OneLineErrorGroup(TyperGroup):
    # Contexts are typed Any: typer >= 0.2x vendors click (typer._click), older ones use click.
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)


@contextmanager
def engine_errors(flags: dict[str, str] | None = None, run: Path | None = None) -> Iterator[None]:
    """Engine failures as one ``error: ...`` line with the exit status of ``s3t.errors``'
    table (the service reads the same table); a ``ConfigError`` names the flag ``flags``
    maps its field to (commands that set the config). ``run``: the run directory the command
    works in, named by the messages about it.

    Only maps exception types to lines: whatever a command must print before failing it
    prints itself.
    """
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        failure = describe(exc, run)
        if failure is None:
            raise
        message = failure.message
        if isinstance(exc, ConfigError) and (flags or {}).get(exc.field):
            message = f"{(flags or {})[exc.field]}: {message}"
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(failure.exit_code) from None
