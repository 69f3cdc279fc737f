"""What each failure means to a user, defined once: one table that both the command line
(``s3t/cli/errors.py``: exit status, ``error:`` line) and the HTTP service
(``s3t/service/errors.py``: status code, JSON error body) read.

Each entry maps an exception type to a kind (the ``error`` of an HTTP error body), the
one-line message, the command line's exit status (2: bad input, 1: refused state, 3-8: a
fault of the run's files, ``s3t.run.storage``) and the HTTP status (None: not the client's
fault, so the service logs it and answers 500). A raw ``sqlite3`` or ``OSError`` failure is
first said as the storage fault it means (``classify``: read-only, permission, disk full,
missing file, damaged or swapped ledger), none of which advises a bare restore (it would
bring deleted data back). The first entry whose type matches wins.
``run``, the run directory, is named in messages about it; the service shows a client
only its name (``s3t/service/errors.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s3t.config import ConfigError
from s3t.run import DeletionLogError, IntegrityError, NoLiveShardError, RetrainRunningError, UnsafeRunError
from s3t.run.forget import (
    EmptyRequestError,
    ForgetRequestError,
    RequestKeyConflict,
    UnknownSamplesError,
)
from s3t.run.storage import (
    DiskFullError,
    LedgerChangedError,
    LedgerDamagedError,
    ReadOnlyRunError,
    RunFault,
    RunFileMissingError,
    RunPermissionError,
    classify,
)

Message = Callable[[BaseException, "Path | None"], str]


@dataclass(frozen=True)
class ErrorKind:
    kind: str
    types: tuple[type[BaseException], ...]
    exit_code: int
    status: int | None                     # None: the service's 500 (logged)
    message: Message = lambda exc, run: one_line(exc)
    retry_after: int | None = None         # seconds, for a 503 that passes
    matches: Callable[[BaseException], bool] = lambda exc: True


@dataclass(frozen=True)
class Failure:
    """A failure as a user sees it: the table's entry and its message."""

    kind: ErrorKind
    message: str

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code

    @property
    def status(self) -> int | None:
        return self.kind.status


def one_line(message: object) -> str:
    return " ".join(str(message).splitlines())


def _locked(exc: BaseException) -> bool:
    return any(word in str(exc) for word in ("locked", "busy"))


def _run_name(run: Path | None) -> str:
    return str(run) if run is not None else "the run"


def _not_writable(run: Path | None, why: object) -> str:
    where = f"the run directory {run}" if run is not None else "the run directory"
    return f"{where} is not writable ({why}): fix its permissions or work on a copy"


def os_message(exc: OSError) -> str:
    """``PATH: reason`` for an errno-style OSError, else its own message."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _within(path: str | Path, root: Path) -> bool:
    path, root = Path(path).resolve(), root.resolve()
    return path == root or root in path.parents or path in root.parents


def _permission(exc: BaseException, run: Path | None) -> str:
    assert isinstance(exc, PermissionError)
    name = exc.filename if isinstance(exc.filename, (str, Path)) else None
    if run is not None and (name is None or _within(name, run)):
        return _not_writable(run, os_message(exc))
    return f"permission denied: {exc.filename}" if exc.filename else str(exc)


def _damaged_ledger(exc: BaseException, run: Path | None) -> str:
    ledger = f"{run}/ledger.sqlite" if run is not None else "the run's ledger"
    return f"{ledger} could not be used ({one_line(exc)}): `s3t audit` says what is wrong"


def _bad_input(exc: BaseException, run: Path | None) -> str:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return one_line(os_message(message) if isinstance(message, OSError) else message)


def _damaged_stage(exc: BaseException, run: Path | None) -> str:
    text = one_line(exc)
    if "s3t retrain" in text:
        return text
    return f"{text}: run `s3t retrain {run or 'RUN'}` to quarantine and rebuild the stage"


TABLE: tuple[ErrorKind, ...] = (
    ErrorKind("read_only", (ReadOnlyRunError,), ReadOnlyRunError.exit_code, 503),
    ErrorKind("permission_denied", (RunPermissionError,), RunPermissionError.exit_code, 503),
    ErrorKind("insufficient_storage", (DiskFullError,), DiskFullError.exit_code, 507),
    ErrorKind("file_missing", (RunFileMissingError,), RunFileMissingError.exit_code, 503),
    ErrorKind("damaged_ledger", (LedgerDamagedError,), LedgerDamagedError.exit_code, 503),
    ErrorKind("ledger_changed", (LedgerChangedError,), LedgerChangedError.exit_code, 503),
    ErrorKind("storage_fault", (RunFault,), RunFault.exit_code, 503),
    ErrorKind("invalid_config", (ConfigError,), 2, 422),
    ErrorKind("not_found", (UnknownSamplesError,), 2, 404),
    ErrorKind("conflict", (RequestKeyConflict,), 2, 409),
    ErrorKind("bad_request", (EmptyRequestError,), 2, 400),
    ErrorKind("invalid_request", (ForgetRequestError,), 2, 422),
    ErrorKind("no_live_shard", (NoLiveShardError,), 1, 503, retry_after=60),
    ErrorKind("damaged_ledger", (DeletionLogError,), 1, 503),
    ErrorKind("damaged_stage", (IntegrityError,), 1, 503, _damaged_stage),
    ErrorKind("conflict", (RetrainRunningError,), 1, 409),
    ErrorKind("unsafe_run", (UnsafeRunError,), 1, None),
    ErrorKind("ledger_busy", (sqlite3.OperationalError,), 1, 503,
              lambda exc, run: f"the ledger of {_run_name(run)} is locked by another process "
                               f"({exc}): try again", retry_after=1, matches=_locked),
    ErrorKind("damaged_ledger", (sqlite3.DatabaseError,), 1, None, _damaged_ledger),
    ErrorKind("not_writable", (PermissionError,), 1, None, _permission),
    ErrorKind("invalid_request", (ValueError, TypeError), 2, 422, _bad_input),
    ErrorKind("not_found", (FileNotFoundError, FileExistsError, KeyError), 2, None, _bad_input),
    ErrorKind("io_error", (OSError,), 1, None, _bad_input),  # a full disk, an I/O error ...
)


def describe(exc: BaseException, run: Path | None = None) -> Failure | None:
    """The table's failure for ``exc`` (None: not one a user can act on: a bug)."""
    if isinstance(exc, (sqlite3.DatabaseError, OSError)):
        exc = classify(exc, run) or exc  # the storage fault it means, if it is one
    for entry in TABLE:
        if isinstance(exc, entry.types) and entry.matches(exc):
            return Failure(entry, entry.message(exc, run))
    return None


def redact(message: str, run_dir: Path | None) -> str:
    """``message`` with the run directory's absolute path shortened to its name: what the
    service shows a client (no path of the server's disk)."""
    if run_dir is None:
        return message
    for path in sorted({str(run_dir.resolve()), str(run_dir.absolute())}, key=len, reverse=True):
        message = message.replace(path, run_dir.name)
    return message
