"""Is the ledger this process holds still the run's ledger?

A process keeps its SQLite connection for as long as it runs (a server: days). If the file
at ``RUN/ledger.sqlite`` is replaced meanwhile (a backup restored over it, a copy moved in),
deleted or overwritten, the connection goes on writing into a file the run no longer has, or
into a mixture: deletions it acknowledges would be lost, and deleted samples would come back
at the next start. So every deletion checks, inside its own transaction (holding the write
lock, so no other s3t process moves the chain meanwhile):

1. the file at the path is the one the connection opened (``st_dev``/``st_ino``, taken when
   the ledger was opened): a replaced or deleted file is refused;
2. a fresh read-only connection to the path reads the same chain head as the held one: a file
   overwritten in place (with an older copy, or garbage) is refused.

At open, a ledger whose chain head is behind the newest certificate file on disk (an older
copy put in place while nothing ran) is refused with the replay command to run.
"""

from __future__ import annotations

import json
import os
import sqlite3
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


def probe_chain_head(path: Path, held: object) -> None:
    """Read the chain head through a fresh read-only connection; it must equal ``held``, the
    head the caller's connection reads (a file overwritten in place shows otherwise)."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as err:
        raise _refusal(path, f"can no longer be opened ({err})") from None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'certificate_chain'").fetchone()
    except sqlite3.DatabaseError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise
        raise _refusal(path, f"was overwritten and no longer reads ({err})") from None
    finally:
        conn.close()
    on_disk = None if row is None else json.loads(row[0])
    if on_disk != held:
        raise _refusal(path, f"was overwritten in place (its chain head reads {on_disk}, this "
                             f"process holds {held})")


def certificates_ahead(known: set[str], head_sequence: int, certificates_dir: Path) -> list[str]:
    """Certificate files on disk the ledger does not hold whose position on the chain lies
    beyond the ledger's head: deletions this ledger has lost. Reads only the unknown files."""
    if not certificates_dir.is_dir():
        return []
    ahead = []
    for entry in certificates_dir.glob("*.json"):
        if entry.stem in known or entry.is_symlink():
            continue
        try:
            sequence = json.loads(entry.read_text(encoding="utf-8")).get("sequence")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(sequence, int) and sequence > head_sequence:
            ahead.append(entry.stem)
    return sorted(ahead)


def behind_message(path: Path, head_sequence: int, ahead: list[str]) -> str:
    run = path.parent
    return (f"{path} is behind the run's certificates: its chain ends at #{head_sequence} but "
            f"{run}/certificates holds {len(ahead)} later deletion(s) it does not record (e.g. "
            f"{ahead[0]}): an older copy of the ledger was put in place, and opening it would "
            f"bring deleted samples back. Nothing was changed; rebuild the run with "
            f"{REPLAY.format(run=run)}")
