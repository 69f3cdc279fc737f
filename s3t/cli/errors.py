"""One-line errors for the command line: usage errors and library exceptions become
``error: ...`` on stderr with exit status 2 (bad input) or 1 (refused state, or a run
directory that cannot be read or written), never a traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from s3t.config import ConfigError


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
    """Engine failures as one ``error: ...`` line: 2 for bad input, 1 for refused state or a
    run directory that cannot be read or written; a ``ConfigError`` names the flag ``flags``
    maps its field to (commands that set the config). ``run``: the run directory the command
    works in, named by the messages about it.

    Only maps exception types to lines: whatever a command must print before failing (a
    deletion's certificate) it prints itself.
    """
    from s3t.run import IntegrityError, NoLiveShardError, RetrainRunningError, UnsafeRunError

    def fail(code: int, message: object) -> typer.Exit:
        typer.echo(f"error: {' '.join(str(message).splitlines())}", err=True)
        return typer.Exit(code)

    try:
        yield
    except typer.Exit:
        raise
    except (IntegrityError, NoLiveShardError, RetrainRunningError, UnsafeRunError) as exc:
        raise fail(1, exc) from None
    except ConfigError as exc:
        flag = (flags or {}).get(exc.field)
        raise fail(2, f"{flag}: {exc}" if flag else exc) from None
    except sqlite3.DatabaseError as exc:  # OperationalError included
        raise fail(1, _sqlite_message(exc, run)) from None
    except PermissionError as exc:
        raise fail(1, _permission_message(exc, run)) from None
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise fail(2, _os_message(message) if isinstance(message, OSError) else message) from None
    except OSError as exc:  # NotADirectoryError, a full disk, an I/O error ...
        raise fail(1, _os_message(exc)) from None


def _os_message(exc: OSError) -> str:
    """``PATH: reason`` for an errno-style OSError, else its own message."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _within(path: str | Path, root: Path) -> bool:
    path, root = Path(path).resolve(), root.resolve()
    return path == root or root in path.parents or path in root.parents


def _not_writable(run: Path | None, why: str) -> str:
    where = f"the run directory {run}" if run is not None else "the run directory"
    return f"{where} is not writable ({why}): fix its permissions or work on a copy"


def _sqlite_message(exc: sqlite3.DatabaseError, run: Path | None) -> str:
    text = str(exc)
    if any(word in text for word in ("readonly", "read-only", "unable to open")):
        return _not_writable(run, text)
    if "locked" in text or "busy" in text:
        return f"the ledger of {run or 'the run'} is locked by another process ({text}): try again"
    ledger = f"{run}/ledger.sqlite" if run is not None else "the run's ledger"
    return (f"{ledger} is damaged or not an SQLite database ({text}): restore the run "
            "directory from a backup")


def _permission_message(exc: PermissionError, run: Path | None) -> str:
    name = exc.filename if isinstance(exc.filename, (str, Path)) else None
    if run is not None and (name is None or _within(name, run)):
        return _not_writable(run, _os_message(exc))
    return f"permission denied: {exc.filename}" if exc.filename else str(exc)


