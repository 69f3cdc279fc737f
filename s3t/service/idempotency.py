"""Client request keys of deletions: ``<run>/service/idempotency.sqlite``.

A deletion may carry a client key (``request_id``). Once the deletion has committed, the
key is recorded with the sha256 of the request's canonical body (sorted, de-duplicated
sample ids and the ledger's keyed hashes of the group keys) and the s3t request id of its
certificate. Re-sending the key
with the same body returns that certificate and deletes nothing; the key with another body
is a conflict (409). Only the hash of the body is kept: group keys never appear in clear,
as in the ledger.

The row is written after the commit, so a crash in between leaves the key unknown; a
retry then re-issues the same deletion, which the engine answers with the original
certificate (a request whose every sample is already deleted by one earlier request).
The file is the server's, beside the ledger: ``s3t audit`` does not read it and
``S3T.save`` does not copy it (a copied run starts with no client keys).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from s3t.run import UnsafeRunError

DIRECTORY = "service"
FILE = "idempotency.sqlite"


KEYED = "k1:"  # a fingerprint with group keys hashed as the ledger hashes them


def fingerprint(sample_ids: Sequence[str], groups: Sequence[str],
                group_hash: Callable[[str], str]) -> str:
    """sha256 of a deletion request's canonical body (order and repeats do not matter), its
    group keys each hashed by ``group_hash``: the ledger's keyed hash (``Ledger.group_hash``,
    HMAC with the run's secret), so the fingerprint cannot be matched to guessed keys."""
    canonical = json.dumps({"sample_ids": sorted(set(sample_ids)),
                            "groups": sorted({group_hash(g) for g in groups})},
                           sort_keys=True, separators=(",", ":"))
    return KEYED + hashlib.sha256(canonical.encode()).hexdigest()


def same_request(stored: str, sample_ids: Sequence[str], groups: Sequence[str],
                 group_hash: Callable[[str], str]) -> bool:
    """Whether a stored fingerprint is of this request; one from before the fingerprints
    were keyed (no ``KEYED`` prefix) is compared as it was computed then."""
    if stored.startswith(KEYED):
        return stored == fingerprint(sample_ids, groups, group_hash)
    canonical = json.dumps({"sample_ids": sorted(set(sample_ids)), "groups": sorted(set(groups))},
                           sort_keys=True, separators=(",", ":"))
    return stored == hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    client_key: str
    fingerprint: str
    request_id: str
    created_at: str


class IdempotencyStore:
    """The client keys of committed deletions. Not thread-safe: the caller serialises."""

    def __init__(self, run_dir: str | Path):
        folder = Path(run_dir) / DIRECTORY
        for path in (folder, folder / FILE):
            if path.is_symlink():
                raise UnsafeRunError(f"{path} is a symbolic link: s3t never writes through "
                                     "links in a run directory; replace it with a real one")
        folder.mkdir(exist_ok=True)
        self.path = folder / FILE
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                    timeout=10)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS client_keys (client_key TEXT PRIMARY KEY, "
                          "fingerprint TEXT NOT NULL, request_id TEXT NOT NULL, "
                          "created_at TEXT NOT NULL)")

    def get(self, client_key: str) -> KeyRecord | None:
        row = self.conn.execute("SELECT client_key, fingerprint, request_id, created_at FROM "
                                "client_keys WHERE client_key = ?", (client_key,)).fetchone()
        return None if row is None else KeyRecord(*row)

    def put(self, client_key: str, fingerprint: str, request_id: str) -> None:
        """Record a committed deletion's key (a key already recorded keeps its first row)."""
        self.conn.execute("INSERT OR IGNORE INTO client_keys VALUES (?, ?, ?, ?)",
                          (client_key, fingerprint, request_id,
                           datetime.now(timezone.utc).isoformat(timespec="microseconds")))

    def close(self) -> None:
        self.conn.close()
