"""What went wrong with the run's files, said truthfully: a read-only run directory, a
permission refused, a full disk, a missing file, a damaged file, or a ledger that is no
longer the run's. Each is its own exception with its own command-line exit status and HTTP
status (503, or 507 for a full disk), and none advises restoring an old copy of the ledger
without replaying the deletions made since (that would bring deleted data back).

``classify`` turns the ``sqlite3`` and ``OSError`` failures that reach a command or an
endpoint into these; ``storage_errors`` does it around the run's own operations, naming
the run directory.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: How a ledger that lost deletions is mended: the replay command (never a bare restore).
REPLAY = ("`s3t restore BACKUP NEWRUN --replay {run}/certificates` (or an export of the "
          "certificates kept elsewhere): it re-applies every deletion made after the backup")


class RunFault(RuntimeError):
    """A run's files cannot be used as they are; nothing half-changed."""

    exit_code = 1
    http_status = 503


class ReadOnlyRunError(RunFault):
    """The run directory is on a read-only file system (or mounted read-only)."""

    exit_code = 3


class RunPermissionError(RunFault):
    """This process may not write (or read) a file of the run."""

    exit_code = 4


class DiskFullError(RunFault):
    """No space left on the device that holds the run."""

    exit_code = 5
    http_status = 507


class RunFileMissingError(RunFault):
    """A file of the run is missing."""

    exit_code = 6


class LedgerDamagedError(RunFault):
    """The ledger file is not a readable SQLite database any more."""

    exit_code = 7


class LedgerChangedError(RunFault):
    """The ledger file this process holds is no longer the run's (replaced, deleted or
    overwritten), or the ledger is behind the run's certificates: deletions are refused."""

    exit_code = 8


def read_only_mount(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def writable(path: Path) -> bool:
    """Whether this process can write in the directory ``path`` (read-only mounts included:
    ``access`` reports EROFS even to root)."""
    return not read_only_mount(path) and os.access(path, os.W_OK)


def read_only_message(run: Path) -> str:
    return (f"the run directory {run} is read-only (a read-only file system or mount): "
            "status, audit, certificates, predict and verify work on it; forget, retrain and "
            "serve need it writable (remount it read-write, or work on a copy); nothing was "
            "changed")


def classify(err: BaseException, run: Path | None) -> RunFault | None:
    """The ``RunFault`` an ``sqlite3`` or ``OSError`` failure means, or None (not a storage
    fault: a busy ledger, bad input ...)."""
    if isinstance(err, RunFault):
        return err
    where = Path(run) if run is not None else None
    name = f"the run directory {where}" if where is not None else "the run directory"
    ledger = f"{where}/ledger.sqlite" if where is not None else "the run's ledger"
    if isinstance(err, sqlite3.DatabaseError):
        text = str(err)
        if "locked" in text or "busy" in text:
            return None
        if "full" in text:
            return DiskFullError(f"no space left on the device holding {name} ({text}): free "
                                 "space and retry; a deletion that failed was not made")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            if where is not None and read_only_mount(where):
                return ReadOnlyRunError(read_only_message(where))
            if where is not None and not (where / "ledger.sqlite").exists():
                return RunFileMissingError(f"{ledger} is missing ({text}): it was deleted or "
                                           f"moved; {REPLAY.format(run=where)}")
            return RunPermissionError(f"{name} is not writable by this process (its ledger: "
                                      f"{text}): fix its owner or permissions and retry; "
                                      "nothing was changed")
        if any(word in text for word in ("malformed", "not a database", "corrupt")):
            return LedgerDamagedError(
                f"{ledger} is damaged ({text}); keep the directory as it is and rebuild the "
                f"ledger from a backup with the deletions replayed: "
                f"{REPLAY.format(run=where or 'RUN')}")
        return None
    if isinstance(err, OSError) and err.errno is not None:
        path = err.filename if isinstance(err.filename, (str, Path)) else None
        inside = where is not None and (path is None or _within(Path(path), where))
        what = f"{path}" if path is not None else name
        if err.errno == errno.EROFS:
            return ReadOnlyRunError(read_only_message(where) if where is not None
                                    else f"{what} is on a read-only file system")
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(f"no space left on the device holding {what} ({err.strerror}):"
                                 " free space and retry")
        if err.errno in (errno.EACCES, errno.EPERM) and inside:
            return RunPermissionError(f"{name} is not writable by this process ({what}: "
                                      f"{err.strerror}): fix its owner or permissions and retry")
        if err.errno == errno.ENOENT and inside and where is not None:
            return RunFileMissingError(f"{what} of the run {where} is missing: it was deleted "
                                       "or moved while in use")
    return None


def _within(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


@contextmanager
def storage_errors(run: Path) -> Iterator[None]:
    """Re-raise storage failures of the run's operations as their ``RunFault``."""
    try:
        yield
    except (sqlite3.DatabaseError, OSError) as err:
        fault = classify(err, run)
        if fault is None:
            raise
        raise fault from err
