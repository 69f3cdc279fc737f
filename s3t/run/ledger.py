"""The ledger: the durable record of where every sample lives, what was deleted, which
stages exist (with file hashes and the slice versions they were trained on) and what is routed.

Every write of stage or sample state is a named operation here: a deletion is one,
``commit_deletion`` (it plans, checks the ledger is still the run's, applies ``bump_versions``,
``scrub_samples``, ``erase_stages``, ``refresh_routes`` and ``record_deletion`` and records the
client key, in one transaction), then ``record_outcome``; a trained stage is ``commit_stage``.
No SQL about the invariant lives anywhere else. Routing is a pure function of the live stage
records (``s3t.run.stages``). Long on purpose: every statement that changes the run's records
is here, so one file shows every way they can change.

SQLite in WAL mode with ``synchronous=FULL`` and ``secure_delete``: a committed deletion
survives a crash, and a deleted sample's text is overwritten rather than left in free pages.
After each deletion the WAL is checkpointed and truncated so no old page image survives.

A stage's lineage is derived, not stored: it is every sample of its prefix's cells that was
present at the slice versions it recorded. A sample deleted at version ``v`` of its slice
belongs to the lineage of exactly the stages that recorded a version below ``v``.

Deletions form a hash chain (``s3t.run.chain``): ``record_deletion`` links each certificate
after the head kept in meta ``certificate_chain``, in the deletion's own transaction. Group
keys are stored as an HMAC with a per-run secret (table ``secrets``), never in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from s3t.run.certificate import CellVersion, Certificate, Seal
from s3t.run.chain import ChainHead, DeletionLogError, is_linked
from s3t.run.deletion import (
    ANCHOR_CELL,
    DeletionCommit,
    DeletionRequest,
    RequestKeyConflict,
    now,
    plan_forget,
)
from s3t.run.faults import fault_point
from s3t.run.identity import FileIdentity, check_same_file, probe_chain_head
from s3t.run.stages import StageRecord, compute_routes, stage_key
from s3t.run.storage import LedgerChangedError
from s3t.run.subject import (
    STATES,
    SubjectOpening,
    changes,
    conflict_message,
    next_states,
    restore_targets,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    sample_id TEXT PRIMARY KEY,
    shard INTEGER NOT NULL,     -- shard and slice -1: an anchor sample (every shard's)
    slice INTEGER NOT NULL,
    grp TEXT,                   -- keyed hash of the group key (keyed_group_hash)
    label INTEGER,              -- NULL once deleted
    input TEXT,                 -- NULL once deleted
    deleted_version INTEGER,    -- the slice version its deletion created
    deleted_request TEXT
);
CREATE INDEX IF NOT EXISTS samples_cell ON samples (shard, slice);
CREATE INDEX IF NOT EXISTS samples_grp ON samples (grp);
CREATE TABLE IF NOT EXISTS slices (
    shard INTEGER NOT NULL, slice INTEGER NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (shard, slice)
);
CREATE TABLE IF NOT EXISTS stages (
    key TEXT PRIMARY KEY,
    shard INTEGER NOT NULL,
    prefix TEXT NOT NULL,       -- JSON list of slices
    versions TEXT NOT NULL,     -- JSON list, the version of each prefix slice when trained
    parent TEXT,
    status TEXT NOT NULL,       -- 'live' | 'erased'
    files TEXT NOT NULL,        -- JSON {file name: sha256}
    n_samples INTEGER NOT NULL,
    val_score REAL,
    created_at TEXT NOT NULL,
    erased_by TEXT
);
CREATE TABLE IF NOT EXISTS routes (shard INTEGER PRIMARY KEY, stage TEXT);
CREATE TABLE IF NOT EXISTS placement (  -- per sample, when the data gave them: fixed at training
    sample_id TEXT PRIMARY KEY, prior REAL, deletable INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS eval_samples (  -- validation data: never deletable
    sample_id TEXT PRIMARY KEY, label INTEGER NOT NULL, input TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    request_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    certificate TEXT NOT NULL   -- JSON, linked into the chain (meta certificate_chain: head)
);
CREATE TABLE IF NOT EXISTS stage_signatures (  -- the run key's signature of each stage record
    key TEXT PRIMARY KEY, signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (  -- never copied into certificates, exports or status
    name TEXT PRIMARY KEY, value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS client_keys (  -- written in the deletion's own transaction
    client_key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,  -- HMAC of the request body (DeletionRequest.fingerprint)
    request_id TEXT NOT NULL,   -- the certificate the key is answered with
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subject_requests (  -- OpenDSR erasures (s3t.run.subject)
    subject_request_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,   -- its deletion's certificate
    state TEXT NOT NULL,        -- received | exact | erased | restored
    record TEXT NOT NULL        -- JSON: times, transitions, callback URLs, restore targets
);
CREATE INDEX IF NOT EXISTS subject_requests_state ON subject_requests (state);
CREATE INDEX IF NOT EXISTS subject_requests_deletion ON subject_requests (request_id);
CREATE TABLE IF NOT EXISTS callbacks (  -- status callbacks not yet delivered (at least once)
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_request_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,        -- the transition it announces
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, -- unix time
    failed TEXT                 -- set when given up: the last error
);
CREATE INDEX IF NOT EXISTS callbacks_subject ON callbacks (subject_request_id);
"""

#: How ``samples.grp`` and certificates' ``groups_hmac`` are computed (meta ``group_hash``).
GROUP_HASH = "hmac-sha256(run secret, sha256(group key))"
GROUP_SECRET = "group_key"
CHAIN_META = "certificate_chain"


def keyed_group_hash(secret: str, group: str) -> str:
    """Keyed hash of a group key: HMAC-SHA256 with the run's secret over the key's sha256.

    Without the secret a short key (``user3``) cannot be recovered by hashing guesses. The
    inner sha256 lets runs from before the secret be upgraded in place: their ledgers stored
    exactly that sha256, which the upgrade re-keys without knowing the keys."""
    inner = hashlib.sha256(group.encode()).hexdigest()
    return _keyed(secret, inner)


def _keyed(secret: str, inner: str) -> str:
    return hmac.new(bytes.fromhex(secret), inner.encode(), hashlib.sha256).hexdigest()


class Ledger:
    FILE = "ledger.sqlite"
    BUSY_MS = 10_000

    def __init__(self, path: str | Path, read_only: bool = False):
        """Open (or create) the ledger at ``path``. ``read_only``: for a run directory that
        cannot be written (nothing is created, every write fails); the file is opened
        read-only, or immutable where SQLite cannot create its shared-memory file there."""
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()  # one transaction at a time on this connection
        self._changed: LedgerChangedError | None = None  # set once: the file is not ours
        if read_only:
            self.conn = self._connect_read_only()
        else:
            self.conn = sqlite3.connect(self.path, isolation_level=None,
                                        check_same_thread=False, timeout=self.BUSY_MS / 1000)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA secure_delete=ON")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
        #: the file this connection opened (a deletion refuses another one at the path)
        self.identity = FileIdentity.of(self.path)
        self._checkpointed: object = None  # chain head our last full checkpoint wrote
        self._partial = False  # our last checkpoint was blocked by another reader
        self._secret_value: str | None = None

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=self.BUSY_MS / 1000)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # A WAL database whose -shm file cannot be created here (a read-only mount, no
            # process has it open): read it as immutable, which needs no shared memory.
            conn = sqlite3.connect(f"file:{quote(str(self.path))}?immutable=1", uri=True,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn

    @classmethod
    def open_existing(cls, path: str | Path, read_only: bool = False) -> Ledger:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ledger at {path}")
        ledger = cls(path, read_only=read_only)
        if ledger.get_meta("format") is None:
            raise ValueError(f"{path} is not an s3t ledger")
        return ledger

    def initialise(self, format_: int) -> None:
        """Make a new ledger a run's: its format, a fresh group-key secret and an empty
        certificate chain, in one transaction."""
        with self.transaction():
            self.set_meta("format", format_)
            self.conn.execute("INSERT INTO secrets VALUES (?, ?)",
                              (GROUP_SECRET, os.urandom(32).hex()))
            self.set_meta("group_hash", GROUP_HASH)
            self.set_meta(CHAIN_META, ChainHead(0, None).to_meta())

    def is_legacy(self) -> bool:
        """A ledger from before the certificate chain and the group-key secret (nothing of
        either present: a ledger holding part of them was damaged, and is not upgraded)."""
        return (self.get_meta(CHAIN_META) is None and self.get_meta("group_hash") is None
                and self._secret() is None
                and not any(is_linked(c) for c in self.stored_certificates()))

    def upgrade_legacy(self) -> bool:
        """Upgrade a ledger from before the chain and the secret, all in one transaction:
        link its certificates in their order (time, then request id) and record the head;
        create the secret and re-key every sample's group hash (the old sha256 becomes
        HMAC(secret, sha256)). Certificates issued before keep their plain ``groups_sha256``
        (they were handed out as they are). Returns whether anything was upgraded."""
        if not self.is_legacy():
            return False
        with self.transaction():
            if not self.is_legacy():  # another process upgraded it meanwhile
                return False
            secret = os.urandom(32).hex()
            self.conn.execute("INSERT INTO secrets VALUES (?, ?)", (GROUP_SECRET, secret))
            old = [r[0] for r in self.conn.execute(
                "SELECT DISTINCT grp FROM samples WHERE grp IS NOT NULL")]
            self.conn.executemany("UPDATE samples SET grp = ? WHERE grp = ?",
                                  [(_keyed(secret, g), g) for g in old])
            self.set_meta("group_hash", GROUP_HASH)
            head = ChainHead(0, None)
            certificates = self.certificates()
            for certificate in certificates:
                certificate, head = certificate.link(head)
                self.conn.execute("UPDATE deletions SET certificate = ? WHERE request_id = ?",
                                  (certificate.to_json(), certificate.request_id))
            self.set_meta(CHAIN_META, head.to_meta())
            self.set_meta("legacy_certificates", len(certificates))
            if certificates:
                self.set_meta("certificate_files_stale", True)
        self._secret_value = None
        return True

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception. Refused
        once this connection's file was found not to be the run's ledger any more."""
        with self._lock:
            if self._changed is not None:
                raise self._changed
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def check_identity(self) -> None:
        """Raise ``LedgerChangedError`` (and refuse every later write) unless the file at
        ``path`` is still the one this connection holds, with the same chain head
        (``s3t.run.identity``). Inside a write transaction, nothing can move the head."""
        if self._changed is not None:
            raise self._changed
        try:
            check_same_file(self.path, self.identity)
            probe_chain_head(self.path, self.get_meta(CHAIN_META), self._checkpointed,
                             self._partial)
        except LedgerChangedError as err:
            self._changed = err
            raise

    def checkpoint(self, attempts: int = 3, busy_ms: int = 200) -> bool:
        """Fold the WAL into the database and truncate it, so no page image of deleted data
        survives. Another connection's open read snapshot can block this: retry briefly and
        report whether it succeeded (every frame committed before it is then scrubbed)."""
        head = self.get_meta(CHAIN_META)  # read first: a success folds at least this in
        self.conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        self._partial = True  # until one completes (an error may leave a partial one)
        try:
            for _ in range(attempts):
                busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    self._checkpointed, self._partial = head, False
                    return True
            return False
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {self.BUSY_MS}")

    # A deletion marks itself scrub-pending in its own transaction; the mark goes only once a
    # checkpoint that began after its commit succeeded, so a crash in between leaves it for
    # the next open and for audit.
    def pending_scrubs(self) -> list[str]:
        value = self.get_meta("scrub_pending")
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else ["unknown"]

    def mark_scrub_pending(self, request_id: str) -> list[str]:
        """Inside a deletion's transaction: add it to the pending marks; return them all."""
        pending = [*self.pending_scrubs(), request_id]
        self.set_meta("scrub_pending", pending)
        return pending

    def clear_scrubbed(self, scrubbed: Iterable[str]) -> None:
        """Inside a transaction: drop the marks a successful checkpoint covered."""
        left = [r for r in self.pending_scrubs() if r not in set(scrubbed)]
        if left:
            self.set_meta("scrub_pending", left)
        else:
            self.clear_meta("scrub_pending")

    def scrub(self) -> bool:
        """Checkpoint and, if it succeeded, clear the marks it covered; True when none is left."""
        pending = self.pending_scrubs()
        if not self.checkpoint():
            return False
        if pending:
            with self.transaction():
                self.clear_scrubbed(pending)
        return not self.pending_scrubs()

    def change_stamp(self) -> tuple[int, int]:
        """Changes by other connections (data_version) and by this one (total_changes)."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0], self.conn.total_changes

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: object) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def clear_meta(self, key: str) -> None:
        self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def get_meta(self, key: str) -> object:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # --- samples ----------------------------------------------------------------------------
    def add_samples(self, rows: Iterable[tuple[str, int, int, str | None, int | None, str]],
                    n_shards: int, n_slices: int) -> None:
        """Rows of (sample_id, shard, slice, group, label, input); slices start at version 0."""
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO samples (sample_id, shard, slice, grp, label, input) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ((sid, sh, sl, None if g is None else self.group_hash(g), y, x)
                 for sid, sh, sl, g, y, x in rows))
            c.executemany("INSERT INTO slices VALUES (?, ?, 0)",
                          [(m, s) for m in range(n_shards) for s in range(n_slices)])

    def add_placement(self, rows: Iterable[tuple[str, float | None, bool]]) -> None:
        """Rows of (sample_id, deletion prior or None, deletable) the data gave at training."""
        with self.transaction() as c:
            c.executemany("INSERT INTO placement VALUES (?, ?, ?)",
                          ((sid, p, int(bool(d))) for sid, p, d in rows))

    def undeletable(self, ids: Sequence[str]) -> list[str]:
        """Which of ``ids`` the data marked ``deletable=false``, sorted."""
        return sorted(r[0] for r in self._where_in(
            "SELECT sample_id FROM placement WHERE deletable = 0 AND sample_id", ids))

    def cell_samples(self, shard: int, slice_: int) -> list[tuple[str, int, str]]:
        """Retained samples of a cell as (id, label, input), sorted by id."""
        return self.conn.execute(
            "SELECT sample_id, label, input FROM samples WHERE shard = ? AND slice = ? "
            "AND deleted_version IS NULL ORDER BY sample_id", (shard, slice_)).fetchall()

    def anchor_samples(self) -> list[tuple[str, int, str]]:
        """The anchor set (``S3TConfig.anchor``: rows at ``ANCHOR_CELL``, never deleted) as
        (id, label, input), sorted by id: every shard's first slice trains on it."""
        return self.cell_samples(*ANCHOR_CELL)

    def anchor_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM samples WHERE shard = ? AND slice = ?",
                                     ANCHOR_CELL).fetchone()[0])

    def find_samples(self, ids: Sequence[str]) -> dict[str, tuple[int, int, int | None]]:
        """Known ids -> (shard, slice, deleted_version)."""
        return {sid: (shard, sl, dv) for sid, shard, sl, dv in self._where_in(
            "SELECT sample_id, shard, slice, deleted_version FROM samples WHERE sample_id", ids)}

    def group_members(self, groups: Sequence[str]) -> dict[str, list[str]]:
        members: dict[str, list[str]] = {g: [] for g in groups}
        for g in groups:
            members[g] = [r[0] for r in self.conn.execute(
                "SELECT sample_id FROM samples WHERE grp = ? ORDER BY sample_id",
                (self.group_hash(g),))]
        return members

    def _secret(self) -> str | None:
        if self._secret_value is None:
            row = self.conn.execute("SELECT value FROM secrets WHERE name = ?",
                                    (GROUP_SECRET,)).fetchone()
            self._secret_value = None if row is None else str(row[0])
        return self._secret_value

    def has_group_secret(self) -> bool:
        return self._secret() is not None

    def group_hash(self, group: str) -> str:
        """The keyed hash this run stores for a group key (:func:`keyed_group_hash`)."""
        secret = self._secret()
        if secret is None:
            raise DeletionLogError(
                f"{self.path} has no group-key secret, so group keys cannot be matched to "
                "samples: the ledger was altered; rebuild it from a backup with the deletions "
                "replayed (`s3t restore BACKUP NEWRUN --replay RUN/certificates`)")
        return keyed_group_hash(secret, group)

    def counts(self) -> tuple[int, int]:
        total, deleted = self.conn.execute(
            "SELECT COUNT(*), COUNT(deleted_version) FROM samples").fetchone()
        return total, deleted

    def eval_count(self) -> int:
        """How many validation samples the run holds."""
        return int(self.conn.execute("SELECT COUNT(*) FROM eval_samples").fetchone()[0])

    def slice_versions(self) -> dict[tuple[int, int], int]:
        return {(m, s): v for m, s, v in self.conn.execute("SELECT shard, slice, version FROM slices")}

    def deleted_samples(self) -> list[tuple[str, int, int, int]]:
        """(id, shard, slice, deleted_version) of every deleted sample."""
        return self.conn.execute(
            "SELECT sample_id, shard, slice, deleted_version FROM samples "
            "WHERE deleted_version IS NOT NULL").fetchall()

    def leaked_inputs(self) -> list[str]:
        """Deleted samples whose input or label is still stored (must be empty)."""
        return [r[0] for r in self.conn.execute(
            "SELECT sample_id FROM samples WHERE deleted_version IS NOT NULL "
            "AND (input IS NOT NULL OR label IS NOT NULL)")]

    def add_eval_samples(self, rows: Iterable[tuple[str, int, str]]) -> None:
        with self.transaction() as c:
            c.executemany("INSERT INTO eval_samples VALUES (?, ?, ?)", rows)

    def eval_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are validation samples."""
        return {r[0] for r in self._where_in("SELECT sample_id FROM eval_samples WHERE sample_id",
                                             ids)}

    def deleted_by(self, ids: Sequence[str]) -> set[str]:
        """The deletion requests that deleted ``ids``."""
        return {r[0] for r in self._where_in(
            "SELECT deleted_request FROM samples WHERE sample_id", ids)}

    def _where_in(self, query: str, ids: Sequence[str]) -> Iterator[tuple]:
        """Rows of ``query IN (ids)``, in chunks below SQLite's parameter limit."""
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            yield from self.conn.execute(f"{query} IN ({','.join('?' * len(chunk))})", chunk)

    def eval_samples(self) -> list[tuple[str, int, str]]:
        return self.conn.execute(
            "SELECT sample_id, label, input FROM eval_samples ORDER BY sample_id").fetchall()

    # --- the invariant's writes ------------------------------------------------------------
    # Each runs inside the caller's ``transaction()``, so a deletion or a stage commit is one
    # all-or-nothing step.
    def bump_versions(self, cells: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """Give each cell a new content version (a deletion changed it); return the new ones."""
        versions = self.slice_versions()
        new = {cell: versions[cell] + 1 for cell in sorted(set(cells))}
        self.conn.executemany("UPDATE slices SET version = ? WHERE shard = ? AND slice = ?",
                              [(v, sh, sl) for (sh, sl), v in new.items()])
        return new

    def scrub_samples(self, deleted: dict[str, int], request_id: str) -> None:
        """Mark samples deleted at the given slice versions and drop their input and label."""
        self.conn.executemany(
            "UPDATE samples SET input = NULL, label = NULL, deleted_version = ?, "
            "deleted_request = ? WHERE sample_id = ?",
            [(version, request_id, sid) for sid, version in deleted.items()])

    def erase_stages(self, keys: Iterable[str], reason: str) -> None:
        """Take stages out of service for good. An erased stage keeps only its identity: its
        file hashes and validation score were computed from weights that are now gone (they
        saw a deleted sample, or their files were damaged)."""
        self.conn.executemany("UPDATE stages SET status = 'erased', erased_by = ?, files = '{}', "
                              "val_score = NULL WHERE key = ?", [(reason, k) for k in keys])

    def commit_stage(self, record: StageRecord, created_at: str) -> bool:
        """Put a freshly trained stage live, unless a deletion changed one of its slices while
        it trained or its parent is no longer live (it would then have seen deleted data or
        built on a stage that did). Returns whether it went live."""
        if record.status != "live" or not record.files:
            raise ValueError(f"stage {record.key}: only a live stage with files can be committed")
        versions = self.slice_versions()
        current = all(versions[(record.shard, s)] == v
                      for s, v in zip(record.prefix, record.versions, strict=True))
        if not current or (record.parent is not None and not self.is_live(record.parent)):
            return False
        self.conn.execute(
            "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (record.key, record.shard, json.dumps(list(record.prefix)),
             json.dumps(list(record.versions)), record.parent, record.status,
             json.dumps(record.files), record.n_samples, record.val_score, created_at))
        return True

    def chain_head(self) -> ChainHead | None:
        return ChainHead.from_meta(self.get_meta(CHAIN_META))

    def record_deletion(self, certificate: Certificate, seal: Seal | None = None
                        ) -> Certificate:
        """Append a deletion's certificate to the log: link it after the chain head (its
        ``sequence`` and ``previous_sha256``) and move the head to it. ``seal`` signs the
        linked certificate (``s3t.run.signing``) before it is stored. Returns it as stored."""
        head = self.chain_head()
        if head is None:
            raise DeletionLogError(
                f"{self.path} has no certificate chain head: the ledger was altered and a new "
                "certificate cannot be linked; rebuild it from a backup with the deletions "
                "replayed (`s3t restore BACKUP NEWRUN --replay RUN/certificates`)")
        certificate, new_head = certificate.link(head)
        if seal is not None:
            certificate = seal(certificate)
        self.conn.execute("INSERT INTO deletions VALUES (?, ?, ?)",
                          (certificate.request_id, certificate.time, certificate.to_json()))
        self.set_meta(CHAIN_META, new_head.to_meta())
        return certificate

    def update_certificate(self, certificate: Certificate) -> None:
        """Store a certificate's outcome fields or signature (only those: its chained part is
        fixed)."""
        committed = self.certificate(certificate.request_id)
        if committed is None or committed.sha256() != certificate.sha256():
            raise ValueError(f"certificate {certificate.request_id}: only its outcome fields "
                             "may change after its deletion committed")
        self.conn.execute("UPDATE deletions SET certificate = ? WHERE request_id = ?",
                          (certificate.to_json(), certificate.request_id))

    # --- a deletion ---------------------------------------------------------------------------
    def commit_deletion(self, request: DeletionRequest, n_shards: int,
                        servable: Callable[[int], bool] = lambda depth: True,
                        seal: Seal | None = None,
                        subject: SubjectOpening | None = None) -> DeletionCommit:
        """Delete durably, in one transaction: check the ledger is still the run's
        (``check_identity``), apply the replay rule (``s3t.run.deletion``), validate the
        request (``plan_forget``: an invalid one changes nothing), bump the hit cells'
        versions, drop the samples' text, erase the stages that saw them, re-route, link the
        certificate into the chain (``seal``: the run key's signature) and record the client
        key, and a subject request's ``received`` and ``exact`` states (``open_subject``).
        Files are erased afterwards by the caller (``forget``), which then calls
        ``record_outcome``.

        The commit is not synced here (``synchronous=NORMAL`` for this transaction): the
        caller's scrub checkpoint syncs the WAL before anything else, or ``sync_wal`` does,
        and only then is the deletion acknowledged (docs/design.md, "What a deletion
        syncs"); one sync fewer than a FULL commit followed by the checkpoint's own."""
        with self._relaxed(), self.transaction():
            self.check_identity()
            fingerprint = None
            if request.client_key is not None:
                fingerprint = request.fingerprint(self._require_secret())
                known = self.client_key(request.client_key)
                if subject is not None:
                    self._refuse_changed_subject(subject, known, fingerprint)
                if known is not None:
                    if known[0] != fingerprint:
                        raise RequestKeyConflict(
                            f"request_id {request.client_key!r} was already used for another "
                            "deletion request: use a new request_id for a new request")
                    certificate = self.certificate(known[1])
                    if certificate is not None:
                        plan = plan_forget(self, request)
                        plan.replay = "client-key"
                        self.open_subject(subject, certificate)
                        return DeletionCommit(plan, certificate)
            plan = plan_forget(self, request)
            if not plan.new:
                original = self.deleted_by(plan.already_deleted)
                certificate = self.certificate(original.pop()) if len(original) == 1 else None
                if certificate is not None:
                    plan.replay = "same-samples"
                    if request.client_key is not None and fingerprint is not None:
                        self._put_client_key(request.client_key, fingerprint,
                                             certificate.request_id)
                    self.open_subject(subject, certificate)
                    return DeletionCommit(plan, certificate)
            request_id = os.urandom(16).hex()
            # Set until this request's files are gone: if it is still set when the next
            # request starts, an erasure was interrupted and the next request finishes it.
            unfinished_erasure = bool(self.get_meta("erase_pending"))
            self.set_meta("erase_pending", True)
            # Cleared only after a successful WAL scrub: a crash before the scrub leaves it
            # for the next open and for audit to see.
            marks = self.mark_scrub_pending(request_id)
            # Cleared when the certificate's outcome is recorded; the next open records it
            # for a request whose process died first.
            self.set_meta("outcome_pending", [*map(list, self.outcome_pending()),
                                              [request_id, os.getpid()]])
            cells = plan.cells
            new_version = self.bump_versions(cells)
            self.scrub_samples({sid: new_version[cell] for sid, cell in plan.new.items()},
                               request_id)
            hit = set(cells)
            erased = [r for r in self.stages("live")
                      if any((r.shard, s) in hit for s in r.prefix)]
            routes_before = self.routes()
            self.erase_stages([r.key for r in erased], reason=request_id)
            routes_after = self.refresh_routes(n_shards, servable)
            certificate = self.record_deletion(Certificate(  # links it
                request_id=request_id, time=now(), samples=tuple(sorted(plan.new)),
                already_deleted=tuple(plan.already_deleted),
                groups_hmac=tuple(sorted(self.group_hash(g) for g in plan.groups)),
                cells=tuple(CellVersion(sh, sl, new_version[(sh, sl)]) for sh, sl in cells),
                erased_stages=tuple(sorted(r.key for r in erased)),
                routes_before={str(k): v for k, v in routes_before.items()},
                routes_after={str(k): v for k, v in routes_after.items()},
                live_shards=sum(v is not None for v in routes_after.values()),
                client_request_id=request.client_key, x_request_id=request.x_request_id),
                seal=seal)
            if request.client_key is not None and fingerprint is not None:
                self._put_client_key(request.client_key, fingerprint, request_id)
            self.open_subject(subject, certificate)
            fault_point("forget:before-commit")
        return DeletionCommit(plan, certificate, erased, new_version, unfinished_erasure, marks)

    def record_outcome(self, certificate: Certificate, scrubbed: Iterable[str]) -> None:
        """After a deletion's erasure: store its certificate's outcome fields, drop the scrub
        marks a successful checkpoint covered, and the pending marks it settles. No commit
        sync of its own (the deletion is durable already; a lost outcome is recorded again by
        ``finish_outcomes`` on open), so ``synchronous`` is lowered for this one transaction,
        under this ledger's lock (docs/design.md, "What a deletion syncs"). No identity
        probe of its own: it runs right after a scrub an open reader may have left partial,
        when the file's own bytes do not read as a database (the deletion's commit checked)."""
        with self._relaxed(), self.transaction():
            self.update_certificate(certificate)
            self.clear_scrubbed(scrubbed)
            if certificate.files_erased:
                self.clear_meta("erase_pending")
            if certificate.files_erased and certificate.ledger_scrubbed:
                left = [[r, pid] for r, pid in self.outcome_pending()
                        if r != certificate.request_id]
                self.set_meta("outcome_pending", left)
            self._advance_subjects(certificate.request_id)

    # --- subject requests (s3t.run.subject): their states and callbacks ------------------------
    def open_subject(self, subject: SubjectOpening | None, certificate: Certificate) -> None:
        """Inside the deletion's transaction: record a subject request as ``received`` and
        ``exact`` and queue their callbacks; a request already recorded is left as it is
        (a replay of the same subject request id)."""
        if subject is None or self._subject_row(subject.subject_request_id) is not None:
            return
        keys = [k for k in (*certificate.routes_before.values(),
                            *certificate.routes_after.values()) if k]
        record = {"submitted_time": subject.submitted_time,
                  "callback_urls": list(subject.callback_urls),
                  "transitions": [["received", subject.received_time],  # a replay of an
                                  ["exact", max(subject.received_time,  # older deletion:
                                                certificate.time)]],  # exact now
                  "targets": restore_targets(certificate.routes_before,
                                             certificate.routes_after,
                                             self.stage_depths(keys))}
        self.conn.execute("INSERT INTO subject_requests VALUES (?, ?, 'exact', ?)",
                          (subject.subject_request_id, certificate.request_id,
                           json.dumps(record)))
        for state in ("received", "exact"):
            self._queue_callbacks(subject.subject_request_id, subject.callback_urls, state)

    def _refuse_changed_subject(self, subject: SubjectOpening, known: tuple[str, str] | None,
                                fingerprint: str) -> None:
        """Raise ``RequestKeyConflict`` if ``subject`` re-sends a recorded subject request id
        (or a plain deletion's request id, ``known``) with other content (``changes``)."""
        same_identities = known is None or known[0] == fingerprint
        row = self._subject_row(subject.subject_request_id)
        differ = ["subject_identities"] if not same_identities else []
        if row is not None:
            differ = changes(row[2], subject, same_identities)
        if differ:
            raise RequestKeyConflict(conflict_message(subject.subject_request_id, differ))

    def _subject_row(self, subject_request_id: str) -> tuple[str, str, dict] | None:
        row = self.conn.execute("SELECT request_id, state, record FROM subject_requests WHERE "
                                "subject_request_id = ?", (subject_request_id,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), json.loads(row[2]))

    def _queue_callbacks(self, subject_request_id: str, urls: Iterable[str], state: str) -> None:
        self.conn.executemany(
            "INSERT INTO callbacks (subject_request_id, url, state, next_attempt) "
            "VALUES (?, ?, ?, 0)", [(subject_request_id, url, state) for url in urls])

    def subject_request(self, subject_request_id: str) -> dict | None:
        """A subject request: its state, record, deletion, and callbacks pending and failed."""
        try:
            row = self._subject_row(subject_request_id)
        except sqlite3.OperationalError:  # a read-only ledger from before subject requests
            return None
        if row is None:
            return None
        request_id, state, record = row
        pending, failed = self.conn.execute(
            "SELECT COUNT(*) - COUNT(failed), COUNT(failed) FROM callbacks "
            "WHERE subject_request_id = ?", (subject_request_id,)).fetchone()
        return {**record, "subject_request_id": subject_request_id, "state": state,
                "request_id": request_id, "callbacks_pending": int(pending),
                "callbacks_failed": int(failed)}

    def stage_depths(self, keys: Sequence[str]) -> dict[str, int]:
        """Stage key -> its prefix length (every status)."""
        return {k: len(json.loads(p)) for k, p in self._where_in(
            "SELECT key, prefix FROM stages WHERE key", list(keys))}

    def served_depths(self) -> dict[str, int]:
        """Shard -> the prefix length of its route (0: it serves nothing)."""
        routes = self.routes()
        depths = self.stage_depths([k for k in routes.values() if k])
        return {str(shard): depths.get(key or "", 0) for shard, key in routes.items()}

    def stage_mark(self) -> int:
        """Grows with every stage committed (``commit_stage`` inserts a row), never otherwise."""
        return int(self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM stages").fetchone()[0])

    def open_subjects(self, state: str | None = None) -> int:
        """Subject requests not yet restored, or in ``state`` (0 for a ledger from before
        them)."""
        where = "state != 'restored'" if state is None else "state = ?"
        try:
            return int(self.conn.execute(f"SELECT COUNT(*) FROM subject_requests WHERE {where}",
                                         () if state is None else (state,)).fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def subject_counts(self) -> dict[str, int]:
        """Subject requests by state (every state of ``STATES``) and their callbacks not yet
        delivered (``callbacks_pending``) and given up (``callbacks_failed``); zeros for a
        ledger from before them."""
        counts = dict.fromkeys((*STATES, "callbacks_pending", "callbacks_failed"), 0)
        try:
            for state, n in self.conn.execute("SELECT state, COUNT(*) FROM subject_requests "
                                              "GROUP BY state"):
                counts[str(state)] = int(n)
            pending, failed = self.conn.execute("SELECT COUNT(*) - COUNT(failed), "
                                                "COUNT(failed) FROM callbacks").fetchone()
        except sqlite3.OperationalError:
            return counts
        counts.update(callbacks_pending=int(pending), callbacks_failed=int(failed))
        return counts

    def advance_subjects(self, restore: bool = True) -> list[str]:
        """Move open subject requests to the states they have reached (``erased``: the
        certificate says the files are gone; ``restored``: their shards serve at their depth
        again) and queue those callbacks, in one transaction; returns the ids advanced.
        ``restore=False`` looks only at those not yet erased (no shard gained depth). Like a
        deletion, refused (``LedgerChangedError``) once the file is not the run's ledger."""
        if not self.open_subjects(None if restore else "exact"):
            return []
        with self._relaxed(), self.transaction():
            self.check_identity()
            return self._advance_subjects(exact_only=not restore)

    def _advance_subjects(self, request_id: str | None = None,
                          exact_only: bool = False) -> list[str]:
        query = "SELECT subject_request_id, request_id, state, record FROM subject_requests " \
                + ("WHERE state = 'exact'" if exact_only else "WHERE state != 'restored'")
        rows = self.conn.execute(query + (" AND request_id = ?" if request_id else ""),
                                 (request_id,) if request_id else ()).fetchall()
        if not rows:
            return []
        served, advanced, at = self.served_depths(), [], now()
        for subject_id, deletion, state, text in rows:
            record = json.loads(text)
            certificate = self.certificate(deletion)
            erased = state != "exact" or bool(certificate is not None
                                              and certificate.files_erased)
            reached = next_states(state, erased, record.get("targets", {}), served)
            if not reached:
                continue
            record["transitions"] += [[s, at] for s in reached]
            self.conn.execute("UPDATE subject_requests SET state = ?, record = ? WHERE "
                              "subject_request_id = ?", (reached[-1], json.dumps(record),
                                                         subject_id))
            for reached_state in reached:
                self._queue_callbacks(subject_id, record.get("callback_urls", []),
                                      reached_state)
            advanced.append(subject_id)
        return advanced

    def due_callbacks(self, at: float, lease_s: float, limit: int = 20) -> list[dict]:
        """Claim up to ``limit`` callbacks due at ``at`` (unix time): each is tried again
        after ``lease_s`` unless ``callback_done`` settles it first (so a server that dies
        while sending leaves it for the next, and two servers do not send it together).
        Refused (``LedgerChangedError``) once the file is not the run's ledger: no callback
        goes out from a ledger the run no longer has."""
        if not self.open_callbacks():
            return []
        with self._relaxed(), self.transaction():
            self.check_identity()
            rows = self.conn.execute(
                "SELECT id, subject_request_id, url, state, attempts FROM callbacks WHERE "
                "failed IS NULL AND next_attempt <= ? ORDER BY id LIMIT ?", (at, limit)).fetchall()
            self.conn.executemany("UPDATE callbacks SET attempts = attempts + 1, next_attempt "
                                  "= ? WHERE id = ?", [(at + lease_s, r[0]) for r in rows])
        return [{"id": r[0], "subject_request_id": r[1], "url": r[2], "state": r[3],
                 "attempts": r[4] + 1} for r in rows]

    def open_callbacks(self) -> int:
        try:
            return int(self.conn.execute("SELECT COUNT(*) FROM callbacks WHERE failed IS NULL")
                       .fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def callback_done(self, callback_id: int, delivered: bool, retry_at: float | None = None,
                      error: str | None = None) -> None:
        """Settle a callback try: delivered (removed), to retry at ``retry_at``, or given up
        (``retry_at`` None: kept with its ``error``). Refused once the file is not the run's
        ledger (the callback stays claimed there and is not settled)."""
        with self._relaxed(), self.transaction():
            self.check_identity()
            if delivered:
                self.conn.execute("DELETE FROM callbacks WHERE id = ?", (callback_id,))
            elif retry_at is not None:
                self.conn.execute("UPDATE callbacks SET next_attempt = ? WHERE id = ?",
                                  (retry_at, callback_id))
            else:
                self.conn.execute("UPDATE callbacks SET failed = ? WHERE id = ?",
                                  (error or "failed", callback_id))

    @contextmanager
    def _relaxed(self) -> Iterator[None]:
        """``synchronous=NORMAL`` for one transaction (under this ledger's lock): what it
        writes can be lost in a power cut and is then derived or sent again (a subject's
        later states come from the certificate and the routes; a callback is re-sent)."""
        with self._lock:
            self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                yield
            finally:
                self.conn.execute("PRAGMA synchronous=FULL")

    def sync_wal(self) -> None:
        """Make every transaction committed so far durable: ``fdatasync`` the WAL file (the
        page cache is the file's, whoever wrote it). Without a WAL file there is nothing to
        sync: what was committed is in the database file, synced when it was folded in."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            getattr(os, "fdatasync", os.fsync)(fd)
        finally:
            os.close(fd)

    def outcome_pending(self) -> list[tuple[str, int]]:
        """(request id, pid of its process) of the deletions committed whose certificate
        outcome is not recorded yet."""
        value = self.get_meta("outcome_pending")
        return [(str(v[0]), int(v[1])) for v in value if isinstance(v, list) and len(v) == 2] \
            if isinstance(value, list) else []

    def client_key(self, client_key: str) -> tuple[str, str] | None:
        """(fingerprint, request id) recorded for a client key, if any."""
        row = self.conn.execute("SELECT fingerprint, request_id FROM client_keys WHERE "
                                "client_key = ?", (client_key,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def client_keys_of(self, request_ids: Sequence[str]) -> dict[str, list[str]]:
        """Request id -> the client keys it was asked with (oldest first), for those of
        ``request_ids`` that had one: what the deletion log shows beside each certificate."""
        out: dict[str, list[str]] = {}
        ids = list(request_ids)
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            rows = self.conn.execute(
                f"SELECT request_id, client_key FROM client_keys WHERE request_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY created_at, client_key", chunk)
            for request_id, key in rows:
                out.setdefault(str(request_id), []).append(str(key))
        return out

    def _put_client_key(self, client_key: str, fingerprint: str, request_id: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO client_keys VALUES (?, ?, ?, ?)",
                          (client_key, fingerprint, request_id, now()))

    def _require_secret(self) -> str:
        secret = self._secret()
        if secret is None:
            raise DeletionLogError(
                f"{self.path} has no group-key secret: the ledger was altered; `s3t audit` "
                "says what else changed")
        return secret

    def refresh_routes(self, n_shards: int,
                       servable: Callable[[int], bool] = lambda depth: True) -> dict[int, str | None]:
        """Route every shard to its best live stage; return the routes."""
        routes = compute_routes(self.stages("live"), n_shards, servable)
        self.conn.executemany("INSERT OR REPLACE INTO routes VALUES (?, ?)", sorted(routes.items()))
        return routes

    # --- reads of stages and routes -------------------------------------------------------
    def stages(self, status: str | None = "live") -> list[StageRecord]:
        query = "SELECT key, shard, prefix, versions, parent, status, files, n_samples, val_score " \
                "FROM stages"
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        return [StageRecord(k, sh, tuple(json.loads(p)), tuple(json.loads(v)), par, st,
                            json.loads(f), n, vs)
                for k, sh, p, v, par, st, f, n, vs in self.conn.execute(query + " ORDER BY key",
                                                                         args)]

    def stage_times(self) -> dict[str, str]:
        """Stage key -> when it was committed (ISO 8601), every status."""
        return dict(self.conn.execute("SELECT key, created_at FROM stages").fetchall())

    def erased_marks(self) -> dict[str, str]:
        """Stage key -> ``erased_by`` (the request or reason that erased it), where set."""
        return dict(self.conn.execute(
            "SELECT key, erased_by FROM stages WHERE erased_by IS NOT NULL").fetchall())

    def is_live(self, key: str) -> bool:
        row = self.conn.execute("SELECT status FROM stages WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] == "live"

    def routes(self) -> dict[int, str | None]:
        return dict(self.conn.execute("SELECT shard, stage FROM routes ORDER BY shard").fetchall())

    def deletion_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM deletions").fetchone()[0]

    def deletion_ids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT request_id FROM deletions")]

    def certificate(self, request_id: str) -> Certificate | None:
        """A deletion's certificate (``CertificateRecordError``: its stored JSON is damaged)."""
        row = self.conn.execute("SELECT certificate FROM deletions WHERE request_id = ?",
                                (request_id,)).fetchone()
        return None if row is None else Certificate.from_json(row[0])

    def certificates(self) -> list[Certificate]:
        """Every certificate, oldest first (by time, then request id)."""
        return [Certificate.from_json(text) for text in self._stored()]

    def stored_certificates(self) -> list[dict]:
        """Every certificate's JSON exactly as stored, oldest first, damaged or not: for the
        checks whose job is to report damage (audit, ``certificates --verify``)."""
        return [json.loads(text) for text in self._stored()]

    def _stored(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT certificate FROM deletions ORDER BY created_at, request_id")]

    # --- signatures of stage records (s3t.run.signing), written in the stage's commit ----------
    def sign_stage(self, key: str, signature: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO stage_signatures VALUES (?, ?)",
                          (key, signature))

    def stage_signatures(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, signature FROM stage_signatures").fetchall())

    def deletion_requests(self) -> dict[str, int]:
        """Request id -> how many samples the ledger says it deleted."""
        return dict(self.conn.execute(
            "SELECT deleted_request, COUNT(*) FROM samples WHERE deleted_request IS NOT NULL "
            "GROUP BY deleted_request").fetchall())


__all__ = ["GROUP_HASH", "Ledger", "StageRecord", "keyed_group_hash", "stage_key"]
