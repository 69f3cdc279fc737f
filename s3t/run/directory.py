"""A run directory without its model: the run card, the ledger, the stage files and the
spilled feature files, with forget, status, audit and the retrain lock on top.

Forgetting, status and audit need nothing else, so they never load torch or the backbone:
`s3t forget` in a fresh process costs file and SQLite work only, whatever the model's size.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from s3t.config import SERVING_FIELDS, S3TConfig
from s3t.plan.methods import Method
from s3t.plan.prefix_tree import PrefixTree
from s3t.run import storage
from s3t.run.audit import AuditReport, audit, quarantine_damaged
from s3t.run.card import (
    RUN_FILE,
    NotARunError,
    card_numeric,
    card_stamp,
    read_card,
    refuse_existing,
    serving_config,
    sweep_card_leftovers,
    write_card,
)
from s3t.run.certificates import (
    CERTIFICATES_DIR,
    chain_summary,
    export,
    restore_certificates,
    rewrite_stale_files,
)
from s3t.run.files import FeatureFiles, IntegrityError, StageStore, refuse_links
from s3t.run.forget import ForgetPlan, finish_outcomes, forget, sweep
from s3t.run.identity import refuse_if_behind
from s3t.run.ledger import Ledger, StageRecord, stage_key
from s3t.run.locks import is_locked, try_lock
from s3t.run.numeric import NumericEnv, new_env
from s3t.run.signing import (
    ENV,
    Signer,
    SigningKeyError,
    check_outside,
    load_signer,
    signer_for,
    stage_payload,
)
from s3t.run.status import run_status
from s3t.run.subject import SubjectOpening

WRITER_LOCK = ".retrain.lock"
FORMAT = 1


class RetrainRunningError(RuntimeError):
    """Another process is training stages of this run."""


class NoLiveShardError(RuntimeError):
    """Every shard has lost its first slice: the model must be retrained before it can serve."""


@dataclass
class Run:
    """An open run directory. ``info`` is its run card (``s3t.json``): config, label names,
    task, backbone path and sha256, orderings."""

    path: Path
    info: dict
    config: S3TConfig
    ledger: Ledger
    store: StageStore
    #: the card version ``info`` was read from (``follow_card``)
    card_version: tuple[int, int, int] | None = dataclasses.field(default=None, compare=False)
    #: the private key a writer signs with (else ``S3T_SIGNING_KEY``; ``signer``)
    signing_key_path: str | None = dataclasses.field(default=None, compare=False)
    _signer: Signer | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def features(self) -> FeatureFiles:
        return FeatureFiles(self.path)

    @property
    def certificates_dir(self) -> Path:
        return self.path / CERTIFICATES_DIR

    @property
    def method(self) -> Method:
        return self.config.training_method()

    @property
    def numeric(self) -> NumericEnv:
        """What every process computing this run's stages must apply (``run/numeric.py``)."""
        return card_numeric(self.info)

    @cached_property
    def tree(self) -> PrefixTree:
        return PrefixTree([tuple(o) for o in self.info["orderings"]])

    @property
    def label_names(self) -> list[str]:
        return list(self.info["label_names"])

    @property
    def task(self) -> str:
        return str(self.info.get("task", "classification"))

    # --- creating and opening -----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: S3TConfig, info: dict) -> Run:
        """Start a new run in ``path`` (which must not hold one): write its card and ledger."""
        path = Path(path)
        cls.refuse_existing(path)
        path.mkdir(parents=True, exist_ok=True)
        info = {"format": FORMAT, "config": config.to_dict(), **info}
        if config.torch_threads >= 1:  # 0: the process's own count (no environment fixed)
            info.setdefault("numeric", new_env(config.torch_threads).to_dict())
        key_path = os.environ.get(ENV)
        if key_path and "signing_key" not in info:  # a new run is signed with the writer's key
            check_outside(Path(key_path), path)
            info["signing_key"] = load_signer(key_path).public
        ledger = Ledger(path / Ledger.FILE)
        ledger.initialise(FORMAT)
        write_card(path, info)
        return cls(path, info, config, ledger, StageStore(path / "stages"), card_stamp(path))

    refuse_existing = staticmethod(refuse_existing)  # s3t.run.card

    @classmethod
    def open(cls, path: str | Path, verify: bool = False, repair: bool = True) -> Run:
        """Open a run; ``repair`` finishes an interrupted forget (stage files the ledger no
        longer holds live are erased; ``audit`` opens without it, to see the disk as it is);
        ``verify`` checks every live stage file's sha256 now (reading a stage always does).
        An unwritable directory opens read-only, unrepaired; a repairing open refuses a ledger
        missing certificates on disk (``s3t.run.storage``, ``s3t.run.identity``)."""
        path = Path(path)
        with storage.storage_errors(path):
            return cls._open(path, verify, repair)

    @classmethod
    def _open(cls, path: Path, verify: bool, repair: bool) -> Run:
        run_file = path / RUN_FILE
        if run_file.is_file() and not (path / Ledger.FILE).exists() and any(
                (path / CERTIFICATES_DIR).glob("*.json")):
            raise storage.RunFileMissingError(
                f"{path / Ledger.FILE} is missing, though {path}/certificates records "
                f"deletions: {storage.REPLAY.format(run=path)}")
        if not run_file.is_file() or not (path / Ledger.FILE).is_file():
            raise NotARunError(f"{path} is not an s3t run directory (no {RUN_FILE} and "
                               f"{Ledger.FILE}); create one with `s3t train --out {path}`")
        version = card_stamp(path)  # before reading: a rewrite in between is read again later
        info, config = read_card(run_file)
        refuse_links([path / name for name in (Ledger.FILE, CERTIFICATES_DIR)
                      if (path / name).is_symlink()])
        read_only = not storage.writable(path)
        try:
            ledger = Ledger.open_existing(path / Ledger.FILE, read_only=read_only)
            versions = ledger.slice_versions()
            upgraded = ledger.is_legacy()
        except (sqlite3.DatabaseError, ValueError) as err:
            if isinstance(err, sqlite3.DatabaseError) and "locked" in str(err):
                raise
            raise storage.LedgerDamagedError(
                f"{path / Ledger.FILE} is damaged or not an s3t ledger ({err}); keep the "
                f"directory as it is and rebuild the ledger with {storage.REPLAY.format(run=path)}"
            ) from None
        run = cls(path, info, config, ledger, StageStore(path / "stages"), version)
        try:
            run._check_card(versions)
            run.store.check_safe()
            run.features.check_safe()
            if repair:  # a ledger missing a certificate on disk: refused (audit reports it)
                run._refuse_if_behind()
            if not read_only:
                # A run from before the certificate chain and the group-key secret is upgraded
                # in one transaction (whether or not we repair: a format change, not a fix).
                if upgraded:
                    ledger.upgrade_legacy()
                rewrite_stale_files(ledger, run.certificates_dir)
        except BaseException:
            ledger.close()
            raise
        if repair and not read_only:
            writer_active = run.writer_running()
            sweep(run.ledger, run.store, run.features, writer_active=writer_active)
            if not writer_active:
                sweep_card_leftovers(path)
            restore_certificates(run.ledger, run.certificates_dir)
            if run.ledger.pending_scrubs():
                run.ledger.scrub()
            if run.ledger.outcome_pending():
                try:
                    signer = run.signer()
                except SigningKeyError:  # left for a writer that holds the run's key
                    signer = None
                finish_outcomes(run.ledger, run.store, run.certificates_dir, signer=signer,
                                signed_run=run.public_key is not None)
        if verify:
            run.verify_live()
        return run

    read_only = property(lambda self: self.ledger.read_only)  # no write access: no repair

    def _check_card(self, versions: dict[tuple[int, int], int]) -> None:
        """The run card must describe the ledger it sits beside (an edited card would make
        forget compute routes for shards that do not exist)."""
        cells = {(self.config.shards, self.config.slices)}
        found = (max(m for m, _ in versions) + 1, max(s for _, s in versions) + 1) \
            if versions else None
        if found not in cells or len(versions) != self.config.shards * self.config.slices:
            raise NotARunError(
                f"{self.path / RUN_FILE} says {self.config.shards} shards x "
                f"{self.config.slices} slices but the ledger holds "
                f"{'no cells' if found is None else f'{found[0]} x {found[1]}'}: the run card was "
                "edited or belongs to another run; restore the original s3t.json")

    def verify_live(self) -> None:
        """Check every live stage's files against their recorded sha256 (a stage that a
        concurrent forget erased meanwhile is not an error)."""
        for record in self.ledger.stages("live"):
            try:
                self.store.verify(record.shard, record.key, record.files)
            except IntegrityError:
                if self.ledger.is_live(record.key):
                    raise

    def close(self) -> None:
        self.ledger.close()

    # --- stages -------------------------------------------------------------------------------
    def stage_key(self, shard: int, prefix: Sequence[int], versions: dict) -> str:
        """The key of ``prefix`` in ``shard`` at the given slice versions."""
        return stage_key(shard, prefix, [versions[(shard, s)] for s in prefix])

    def is_current(self, block: object, version: object) -> bool:
        """Whether a cell is still at ``version`` in the ledger right now (other blocks: yes)."""
        if not isinstance(block, tuple):
            return True
        return self.ledger.slice_versions().get(block) == version

    def live_stages(self) -> dict[str, StageRecord]:
        return {r.key: r for r in self.ledger.stages("live")}

    def quarantine_damaged(self) -> list[str]:
        """Take live stages whose files fail their hash check out of service and erase them."""
        return quarantine_damaged(self.ledger, self.store, self.config.shards,
                                  self.method.servable, self.public_key)

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """One writer of stages (fit or retrain) per run directory at a time; deletions may go
        on meanwhile. While it is held, opening the run never sweeps a stage directory the
        writer may still commit."""
        with open(self.path / WRITER_LOCK, "w") as handle:
            if not try_lock(handle):
                raise RetrainRunningError(
                    f"another retrain (or training) is running on {self.path}: wait for it to "
                    "finish; deletions are accepted meanwhile")
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def writer_running(self) -> bool:
        """Whether a live process holds the writer lock."""
        return is_locked(self.path / WRITER_LOCK)

    # --- signed records (s3t.run.signing) -------------------------------------------------------
    @property
    def public_key(self) -> str | None:
        """The run's public signing key (``ed25519:<hex>``), None for an unsigned run."""
        value = self.info.get("signing_key")
        return value if isinstance(value, str) else None

    def signer(self) -> Signer | None:
        """The key this process signs with: None for an unsigned run; for a signed run the
        run's private key, or ``SigningKeyError`` (a writer without it must not write)."""
        if self._signer is None:
            self._signer = signer_for(self.public_key, self.path, self.signing_key_path)
        return self._signer

    def sign_stage(self, record: StageRecord) -> None:
        """Inside a stage's committing transaction: record the run key's signature of it."""
        signer = self.signer()
        if signer is not None:
            self.ledger.sign_stage(record.key, signer.sign(stage_payload(
                record.key, record.shard, record.prefix, record.versions, record.parent,
                record.files, record.n_samples, record.val_score)))

    # --- the deletion path --------------------------------------------------------------------
    def forget(self, sample_ids: Sequence[str] | None = None,
               groups: Sequence[str] | None = None,
               client_key: str | None = None, subject: SubjectOpening | None = None,
               x_request_id: str | None = None) -> tuple[ForgetPlan, dict]:
        """Delete exactly (``s3t.run.forget``: ``client_key``, the idempotency key, and
        ``x_request_id``, the caller's log id, go into the certificate (returned as JSON);
        ``plan.replay``: answered as a replay; ``subject``: an erasure request)."""
        if isinstance(sample_ids, str):
            sample_ids = [sample_ids]
        if isinstance(groups, str):
            groups = [groups]
        if self.read_only:
            raise storage.ReadOnlyRunError(storage.read_only_message(self.path))
        with storage.storage_errors(self.path):
            plan, certificate = forget(self.ledger, self.store, sample_ids, groups,
                                       self.config.shards, self.certificates_dir,
                                       self.method.servable, self.features, client_key,
                                       self.signer(), subject, x_request_id)
        return plan, certificate.to_dict()

    def check_ledger(self) -> None:
        """Raise ``LedgerChangedError`` unless ``ledger.sqlite`` is still the file this run
        holds open (``s3t.run.identity``): for readiness checks and before an audit."""
        with storage.storage_errors(self.path):
            self.ledger.check_identity()

    def audit(self) -> AuditReport:
        report = audit(self.ledger, self.store, self.features, self.certificates_dir,
                       public_key=self.public_key)
        try:
            self._refuse_if_behind()
        except storage.LedgerChangedError as err:
            report.ok, report.violations = False, [str(err), *report.violations]
        return report

    def _refuse_if_behind(self) -> None:
        head = self.ledger.chain_head()
        refuse_if_behind(self.ledger.path, set(self.ledger.deletion_ids()),
                         head.sequence if head else 0, self.certificates_dir)

    def certificates(self) -> dict:
        """The deletion log: every certificate's position, id, counts and sha256; the chain
        head and whether the chain is intact (``s3t certificates``)."""
        return chain_summary(self.ledger)

    def set_serving(self, **choices: str) -> bool:
        """Change serving choices without retraining (``serving_config``); the card is rewritten
        atomically under the writer lock; a process with the run open follows (``follow_card``)."""
        config = serving_config(self.config, choices, self.ledger.eval_count() > 0)
        if config == self.config:
            return False
        info = {**self.info, "config": config.to_dict()}
        with self.writer_lock():
            write_card(self.path, info)
        self.info, self.config, self.card_version = info, config, card_stamp(self.path)
        return True

    def follow_card(self) -> bool:
        """Adopt a serving choice another process wrote to the card since this one read it
        (``s3t configure`` while ``s3t serve`` runs); returns whether it changed. One stat
        when nothing changed. Only serving choices are taken: the rest of the card is fixed
        for the run's life and checked when the run is opened, and a card that no longer
        reads is refused then, so until then this process keeps serving as it was."""
        version = card_stamp(self.path)
        if version is None or version == self.card_version:
            return False
        self.card_version = version
        try:
            _, card = read_card(self.path / RUN_FILE)
        except NotARunError:
            return False
        chosen = {name: getattr(card, name) for name in SERVING_FIELDS}
        if all(getattr(self.config, name) == value for name, value in chosen.items()):
            return False
        config = dataclasses.replace(self.config, **chosen)
        self.info, self.config = {**self.info, "config": config.to_dict()}, config
        return True

    def export_certificates(self, directory: str | Path) -> dict:
        """Write every certificate and the chain (``chain.json``) into a new or empty
        directory, for an auditor; nothing secret is written."""
        return export(self.ledger, Path(directory), self.public_key)

    def status(self) -> dict:
        self.follow_card()
        return run_status(self.path, self.config, self.ledger, len(self.label_names), self.task)

    # A ``with`` block closes the run: a command that opens one never leaves it to the GC.
    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
