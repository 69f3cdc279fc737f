"""One-line errors for the command line: usage errors and library exceptions become
``error: ...`` on stderr with exit status 2 (bad input), 1 (refused state), or the status of
a fault of the run's files (``s3t.run.storage``: 3 read-only, 4 permission denied, 5 disk
full, 6 file missing, 7 ledger damaged, 8 ledger swapped or behind its certificates), never a
traceback."""

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
    from s3t.run.storage import RunFault, classify

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
    except RunFault as exc:  # read-only, denied, full, missing, damaged, swapped: own status
        raise fail(exc.exit_code, exc) from None
    except (sqlite3.DatabaseError, OSError) as exc:
        fault = classify(exc, run)
        if fault is not None:
            raise fail(fault.exit_code, fault) from None
        if isinstance(exc, sqlite3.DatabaseError):  # OperationalError included
            raise fail(1, _sqlite_message(exc, run)) from None
        if isinstance(exc, PermissionError):
            raise fail(1, _permission_message(exc, run)) from None
        if isinstance(exc, (FileNotFoundError, FileExistsError)):
            raise fail(2, _os_message(exc)) from None
        raise fail(1, _os_message(exc)) from None  # NotADirectoryError, an I/O error ...
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise fail(2, _os_message(message) if isinstance(message, OSError) else message) from None


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
    return f"{ledger} could not be used ({text}): `s3t audit` says what is wrong"


def _permission_message(exc: PermissionError, run: Path | None) -> str:
    name = exc.filename if isinstance(exc.filename, (str, Path)) else None
    if run is not None and (name is None or _within(name, run)):
        return _not_writable(run, _os_message(exc))
    return f"permission denied: {exc.filename}" if exc.filename else str(exc)


