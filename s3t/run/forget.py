"""Forgetting: the exactness invariant, enforced.

> No parameter that can be served, and no file kept on disk, was computed from a deleted sample.

``forget`` hands the request to the ledger's one named deletion, ``Ledger.commit_deletion``
(validate, replay rule, commit: one SQLite transaction, durable before it returns), then
erases the invalidated stages' files and records the outcome (``Ledger.record_outcome``). It
never trains. Once committed, the caller always gets the certificate: a failure while erasing
is recorded in it (and the erasure finished by the next open), never raised as if the deletion
had not happened. ``sweep`` finishes an erasure that a crash interrupted; it removes only what
the ledger names as erased, or what a writer that is gone left half-made; a stage folder it
cannot remove is a warning (``audit`` reports the folder), never a failure of the command.
``finish_outcomes`` fills in the outcome of certificates whose process died before it could.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from s3t.run.certificate import Certificate
from s3t.run.certificates import write_certificate
from s3t.run.deletion import (
    DeletionCommit,
    DeletionRequest,
    EmptyRequestError,
    ForgetPlan,
    ForgetRequestError,
    RequestKeyConflict,
    UndeletableSampleError,
    UnknownSamplesError,
    ValidationSampleError,
    now,
    plan_forget,
)
from s3t.run.faults import fault_point
from s3t.run.files import FeatureFiles, StageStore
from s3t.run.ledger import Ledger
from s3t.run.locks import process_alive
from s3t.run.signing import Signer
from s3t.run.subject import SubjectOpening

log = logging.getLogger("s3t.run")

__all__ = ["EmptyRequestError", "ForgetPlan", "ForgetRequestError", "RequestKeyConflict",
           "UndeletableSampleError",
           "UnknownSamplesError", "ValidationSampleError", "erase_invalidated",
           "finish_outcomes", "forget", "now", "plan_forget", "sweep"]


def forget(ledger: Ledger, store: StageStore, sample_ids: Sequence[str] | None,
           groups: Sequence[str] | None, n_shards: int, certificates_dir: Path,
           servable: Callable[[int], bool] = lambda depth: True,
           features: FeatureFiles | None = None,
           client_key: str | None = None,
           signer: Signer | None = None,
           subject: SubjectOpening | None = None,
           x_request_id: str | None = None) -> tuple[ForgetPlan, Certificate]:
    """Validate, commit durably, then erase; return the plan and the certificate (signed by
    ``signer``, the run's key, when the run has one).

    A replay (``s3t.run.deletion``: a recorded client key, or a request whose every sample
    one earlier request deleted) returns that request's certificate unchanged and commits
    nothing; ``plan.replay`` says which. ``subject``: an erasure request whose states the
    ledger tracks (``s3t.run.subject``), recorded in the deletion's transaction.
    ``client_key`` and ``x_request_id`` (the id of the caller's log lines) are written into
    the certificate.
    """
    started = time.perf_counter()
    request = DeletionRequest.of(sample_ids, groups, client_key, x_request_id)
    commit = ledger.commit_deletion(request, n_shards, servable,
                                    seal=None if signer is None else signer.seal_record,
                                    subject=subject)
    if not commit.committed:
        ledger.sync_wal()  # what it is answered with may be another process's unsynced commit
        return commit.plan, commit.certificate
    # Committed: from here on the deletion holds even if the process dies; a later forget
    # or open finishes any erasure left undone. Made durable first (raising if it cannot
    # be: then it is not acknowledged); nothing after that may turn it into an error.
    fault_point("forget:after-commit")
    scrubbed = _scrub_durably(ledger)
    certificate = _erase(ledger, store, features, commit, scrubbed)
    marks = commit.scrub_marks if scrubbed else []
    certificate = certificate.timed(round((time.perf_counter() - started) * 1000, 3))
    fault_point("forget:before-certificate")
    try:
        if signer is not None:
            certificate = signer.seal_outcome(certificate)
        ledger.record_outcome(certificate, marks)
        # Not synced: the ledger holds the certificate (durable since the commit) and
        # opening the run rewrites a copy that a power loss left missing or torn.
        write_certificate(certificates_dir, certificate, sync=False)
    except Exception as err:  # the ledger row written at commit still holds the deletion
        certificate = certificate.certificate_failed(f"{type(err).__name__}: {err}")
    return commit.plan, certificate


def _scrub_durably(ledger: Ledger) -> bool:
    """Fold the WAL into the database and truncate it (the scrub); this also makes the
    unsynced commit durable, as the checkpoint syncs the WAL before it copies pages and the
    database before it truncates. If it cannot run (another reader's snapshot, an error),
    sync the WAL alone. Returns whether it scrubbed; raises only if the commit could not be
    made durable."""
    try:
        scrubbed = ledger.checkpoint()
    except sqlite3.Error:
        scrubbed = False
    if not scrubbed:
        ledger.sync_wal()
    return scrubbed


def _erase(ledger: Ledger, store: StageStore, features: FeatureFiles | None,
           commit: DeletionCommit, scrubbed: bool) -> Certificate:
    """Erase the invalidated stages' files and the hit cells' spilled features (the WAL was
    scrubbed before, ``_scrub_durably``: ``scrubbed``); return the certificate with what was
    done. A failure is recorded in it (and finished by the next open), never raised."""
    erased = commit.erased
    blocks: int | None = None
    try:
        fault_point("forget:after-scrub")
        # No directory sync: the ledger named these stages erased durably (the commit), and
        # opening the run sweeps a directory that a power loss brings back (docs/design.md,
        # "What a deletion syncs").
        store.erase_all([(r.shard, r.key) for r in erased], sync=False)
        fault_point("forget:after-erase")
        # Spilled feature-cache blocks of the hit cells hold the deleted inputs in derived
        # form; after an interrupted request, those of every cell.
        cells_to_clean = ledger.slice_versions() if commit.unfinished_erasure \
            else commit.new_version
        blocks = len(features.erase_stale(cells_to_clean, sync=False)) \
            if features is not None else 0
        if commit.unfinished_erasure:
            files_erased = erase_invalidated(ledger, store)
        else:
            files_erased = not any(store.path(r.shard, r.key).exists() for r in erased)
        if features is not None and features.stale(cells_to_clean):
            files_erased = False
    except Exception as err:  # recorded for the caller and finished by the next open
        return commit.certificate.erasure(ledger_scrubbed=scrubbed, feature_blocks_erased=blocks,
                                          files_erased=False,
                                          erase_error=f"{type(err).__name__}: {err}")
    return commit.certificate.erasure(ledger_scrubbed=scrubbed, feature_blocks_erased=blocks,
                                      files_erased=files_erased)


def finish_outcomes(ledger: Ledger, store: StageStore, certificates_dir: Path,
                    signer: Signer | None = None, signed_run: bool = False) -> list[str]:
    """For deletions whose process died between the commit and recording the outcome (or
    whose erasure or scrub failed then): once the files are gone and the WAL is scrubbed,
    which opening the run finishes, record that in the certificate (``files_erased``,
    ``ledger_scrubbed``) and rewrite its file, signed by ``signer`` on a signed run (a process
    without the run's key leaves them for one that has it). Returns the request ids settled."""
    if signed_run and signer is None:
        return []
    settled = []
    scrub_left = set(ledger.pending_scrubs())
    for request_id, pid in ledger.outcome_pending():
        if pid == os.getpid() or process_alive(pid):
            continue  # its own process records it (it may be erasing right now)
        certificate = ledger.certificate(request_id)
        if certificate is None or request_id in scrub_left:
            continue
        if any(store.path(int(key.split("-", 1)[0]), key).exists()
               for key in certificate.erased_stages):
            continue
        certificate = certificate.settled()
        if signer is not None:
            certificate = signer.seal_outcome(certificate)
        ledger.record_outcome(certificate, [])
        write_certificate(certificates_dir, certificate, fault=False, sync=False)
        settled.append(request_id)
    return settled


def erase_invalidated(ledger: Ledger, store: StageStore) -> bool:
    """Erase the files of every erased stage still on disk; True when none is left."""
    store.erase_all([(r.shard, r.key) for r in ledger.stages("erased")])
    return all(not store.path(r.shard, r.key).exists() for r in ledger.stages("erased"))



def sweep(ledger: Ledger, store: StageStore, features: FeatureFiles | None = None,
          writer_active: bool = False) -> list[str]:
    """Finish what crashes left: erase the stage directories of erased stages and stale
    feature-cache blocks; when no writer (fit or retrain) is running, also half-written or
    half-erased stage directories and stage directories the ledger never committed.
    Entries s3t did not make are left alone (``audit`` reports them). One that cannot be
    removed (permissions, a busy mount) is logged as a warning and left for the next open:
    ``audit`` keeps reporting it, and no command fails because of it."""
    records = {(r.shard, r.key): r.status for r in ledger.stages(None)}
    removed = []
    for shard, key in store.on_disk():
        status = records.get((shard, key))
        ours = status == "erased" or (status is None and not writer_active)
        if ours and _removed(store.erase, store.path(shard, key), shard, key):
            removed.append(key)
    if not writer_active:
        for leftover in store.leftovers():
            if _removed(store.erase_leftover, leftover, leftover) is not False:
                removed.append(str(leftover))
    if features is not None:
        stale = features.erase_stale(ledger.slice_versions()) + features.erase_orphans()
        removed += [str(path) for path in stale]
    return removed


def _removed(erase: Callable[..., bool | None], where: Path, *args: object) -> bool | None:
    """``erase(*args)``, or False with a warning when the file system refuses it."""
    try:
        return erase(*args)
    except OSError as err:
        log.warning("could not remove %s (%s); it stays until a later open removes it, and "
                    "`s3t audit` reports it", where, err)
        return False
