"""Is the ledger this process holds still the run's ledger?

A process keeps its SQLite connection for as long as it runs (a server: days). If the file
at ``RUN/ledger.sqlite`` is replaced meanwhile (a backup restored over it, a copy moved in),
deleted or overwritten, the connection goes on writing into a file the run no longer has, or
into a mixture: deletions it acknowledges would be lost, and deleted samples would come back
at the next start. So every deletion checks, inside its own transaction (holding the write
lock, so no other s3t process moves the chain meanwhile):

1. the file at the path is the one the connection opened (``st_dev``/``st_ino``, taken when
   the ledger was opened): a replaced or deleted file is refused;
2. the database file's own bytes (read ``immutable``, without the write-ahead log) hold a
   chain head no older than the one this connection last checkpointed into it, and no newer
   than the one it holds: a file overwritten in place (an older copy, garbage) is refused.

At open, a ledger whose chain head is behind the newest certificate file on disk (an older
copy put in place while nothing ran) is refused with the replay command to run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from s3t.run.storage import REPLAY, LedgerChangedError


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(st.st_dev, st.st_ino)

    def __str__(self) -> str:
        return f"device {self.device}, inode {self.inode}"


def _refusal(path: Path, what: str) -> LedgerChangedError:
    run = path.parent
    return LedgerChangedError(
        f"{path} {what} while this process held it open: deletions are refused from now on, "
        "since they would go into a ledger the run no longer has (every deletion acknowledged "
        f"before is in the ledger this process opened and in {run}/certificates). Stop this "
        f"process; if an older copy was put in place, rebuild with {REPLAY.format(run=run)}")


def check_same_file(path: Path, opened: FileIdentity | None) -> None:
    """Raise ``LedgerChangedError`` if ``path`` is not the file opened as ``opened``."""
    now = FileIdentity.of(path)
    if now is None:
        raise _refusal(path, "was deleted")
    if opened is not None and now != opened:
        raise _refusal(path, f"was replaced by another file ({opened} became {now})")


NOT_YET = "no ledger tables in the file yet"


def _raw_chain_head(path: Path) -> object:
    """The chain head as the database file itself holds it, without the write-ahead log
    (``immutable``: no WAL, no locks). A read torn by a concurrent checkpoint is retried."""
    for attempt in range(3):
        conn = sqlite3.connect(f"file:{quote(str(path))}?immutable=1", uri=True)
        try:
            if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'meta'"
                            ).fetchone()[0] == 0:
                return NOT_YET  # a new ledger whose first pages are still only in the WAL
            row = conn.execute("SELECT value FROM meta WHERE key = 'certificate_chain'").fetchone()
            return None if row is None else json.loads(row[0])
        except (sqlite3.DatabaseError, ValueError) as err:
            if attempt == 2:
                raise _refusal(path, f"was overwritten and no longer reads ({err})") from None
            time.sleep(0.05)
        finally:
            conn.close()
    return None


def _sequence(head: object) -> int:
    return int(head["sequence"]) if isinstance(head, dict) and isinstance(
        head.get("sequence"), int) else 0


def probe_chain_head(path: Path, held: object, checkpointed: object,
                     partial: bool = False) -> None:
    """Check the database file's own bytes against what this connection holds: ``held``, the
    chain head it reads now, and ``checkpointed``, the head its last successful checkpoint
    folded into the file (None: none yet). The file's head only moves forward between the
    two; a file overwritten in place (an older copy, garbage) shows otherwise. ``partial``:
    this connection's last checkpoint was blocked by another reader's snapshot, after which
    the file alone need not read as a database until a checkpoint completes, so an
    unreadable file is not taken for an overwritten one then (the file's identity is still
    checked by ``check_same_file``)."""
    try:
        raw = _raw_chain_head(path)
    except LedgerChangedError:
        if partial:
            return
        raise
    if raw == NOT_YET:
        if checkpointed is not None:
            raise _refusal(path, "was overwritten in place (the file holds no ledger tables, "
                                 "though this process checkpointed them into it)")
        return
    if _sequence(raw) > _sequence(held):
        raise _refusal(path, f"was overwritten in place (its chain head reads {raw}, this "
                             f"process holds {held})")
    if checkpointed is not None and (
            _sequence(raw) < _sequence(checkpointed)
            or (_sequence(raw) == _sequence(checkpointed) and raw != checkpointed)):
        raise _refusal(path, f"was overwritten in place with an older copy (its chain head "
                             f"reads {raw}, but {checkpointed} was written to it before)")


def certificates_ahead(known: set[str], certificates_dir: Path) -> list[str]:
    """Certificate files on disk that the ledger does not hold: each names its own request
    (``<request_id>.json`` holding that id) and a position on the chain, so a deletion was
    committed into a ledger, and this one lacks it (an older copy, or one mixed with another
    file's write-ahead log). Reads only the files the ledger does not know."""
    if not certificates_dir.is_dir():
        return []
    ahead = []
    for entry in certificates_dir.glob("*.json"):
        if entry.stem in known or entry.is_symlink():
            continue
        try:
            certificate = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(certificate, dict) and certificate.get("request_id") == entry.stem \
                and isinstance(certificate.get("sequence"), int):
            ahead.append(entry.stem)
    return sorted(ahead)


def refuse_if_behind(path: Path, known: set[str], head_sequence: int,
                     certificates_dir: Path) -> None:
    """At open: raise ``LedgerChangedError`` if ``certificates_dir`` holds certificates of
    deletions the ledger at ``path`` (holding ``known``) does not record."""
    ahead = certificates_ahead(known, certificates_dir)
    if not ahead:
        return
    run = path.parent
    raise LedgerChangedError(
        f"{path} is behind the run's certificates: its chain ends at #{head_sequence} but "
        f"{run}/certificates holds {len(ahead)} deletion(s) it does not record (e.g. "
        f"{ahead[0]}): an older copy of the ledger was put in place, and opening it would "
        f"bring deleted samples back. Nothing was changed; rebuild the run with "
        f"{REPLAY.format(run=run)}")
