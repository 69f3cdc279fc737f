"""Forgetting: the exactness invariant, enforced.

> No parameter that can be served, and no file kept on disk, was computed from a deleted sample.

``forget`` validates the whole request before touching anything, commits the deletion,
the invalidated stages and the new routes in one SQLite transaction (durable before it
returns), then erases the invalidated stages' files. It never trains. Once committed, the
caller always gets the certificate: a failure while erasing is recorded in it (and the
erasure finished by the next open), never raised as if the deletion had not happened.
``sweep`` finishes an erasure that a crash interrupted; it removes only what the ledger names
as erased, or what a writer that is gone left half-made.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from s3t.run.certificates import write_json_atomic
from s3t.run.faults import fault_point
from s3t.run.files import FeatureFiles, StageStore
from s3t.run.ledger import Ledger, StageRecord
from s3t.run.signing import Signer


class ForgetRequestError(ValueError):
    """The deletion request is invalid; nothing was changed."""


class EmptyRequestError(ForgetRequestError):
    """The request names no sample and no group."""


class UnknownSamplesError(ForgetRequestError):
    """The request names sample ids or groups the run does not hold."""


class ValidationSampleError(ForgetRequestError):
    """The request names validation samples, which are never deletable."""


class UndeletableSampleError(ForgetRequestError):
    """The request names samples the training data marked ``deletable=false``."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class ForgetPlan:
    new: dict[str, tuple[int, int]]          # sample id -> cell, not yet deleted
    already_deleted: list[str]
    groups: list[str]

    @property
    def cells(self) -> list[tuple[int, int]]:
        return sorted(set(self.new.values()))


def _shown(items: list[str]) -> str:
    return ", ".join(items[:20]) + (f" (and {len(items) - 20} more)" if len(items) > 20 else "")


def plan_forget(ledger: Ledger, sample_ids: Sequence[str] | None,
                groups: Sequence[str] | None) -> ForgetPlan:
    """Validate a request completely; raise ``ForgetRequestError`` before any change."""
    ids = [str(i) for i in (sample_ids or [])]
    group_keys = [str(g) for g in (groups or [])]
    if not ids and not group_keys:
        raise EmptyRequestError("empty deletion request: give at least one sample id or group")
    found = ledger.find_samples(ids)
    unknown = sorted(set(ids) - set(found))
    validation = sorted(set(unknown) & ledger.eval_ids(unknown))
    if validation:
        raise ValidationSampleError(
            f"validation samples cannot be forgotten: {_shown(validation)}. They are never "
            "deletable because every stage's validation score (which picks routes among equally "
            "deep stages) was computed on them; to remove one, train a new run without it "
            "(s3t train --eval FILE without that sample); nothing was deleted")
    if unknown:
        raise UnknownSamplesError(f"unknown sample ids: {_shown(unknown)}; nothing was deleted")
    members = ledger.group_members(group_keys)
    empty = sorted(g for g, m in members.items() if not m)
    if empty:
        raise UnknownSamplesError(f"unknown groups: {', '.join(empty)}; nothing was deleted")
    extra = [sid for m in members.values() for sid in m if sid not in found]
    found.update(ledger.find_samples(extra))
    new = {sid: (sh, sl) for sid, (sh, sl, dv) in found.items() if dv is None}
    kept = ledger.undeletable(list(new))
    if kept:
        raise UndeletableSampleError(
            f"samples marked deletable=false cannot be forgotten: {_shown(kept)}. The training "
            "data declared them never deleted (licensed, public or consented-forever data), so "
            "placement by prior put them in the first slices that every deeper stage builds "
            "on; to remove one, train a new run with it marked deletable (or without it); "
            "nothing was deleted")
    already = sorted(sid for sid, (_, _, dv) in found.items() if dv is not None)
    return ForgetPlan(new=new, already_deleted=already, groups=group_keys)


def forget(ledger: Ledger, store: StageStore, sample_ids: Sequence[str] | None,
           groups: Sequence[str] | None, n_shards: int, certificates_dir: Path,
           servable: Callable[[int], bool] = lambda depth: True,
           features: FeatureFiles | None = None,
           signer: Signer | None = None) -> tuple[ForgetPlan, dict]:
    """Validate, commit durably, then erase; return the plan and the certificate (signed by
    ``signer``, the run's key, when the run has one).

    The request is planned inside the write transaction, so a concurrent forget cannot slip
    in between the check and the commit; an invalid request rolls back having changed nothing.
    A request whose every sample one earlier request already deleted returns that request's
    certificate unchanged (re-issuing a request is safe).
    """
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    with ledger.transaction():
        plan = plan_forget(ledger, sample_ids, groups)
        if not plan.new:
            original = ledger.deleted_by(plan.already_deleted)
            if len(original) == 1:
                certificate = ledger.certificate(original.pop())
                if certificate is not None:
                    return plan, certificate
        # Set until this request's files are gone: if it is still set when the next request
        # starts, an erasure was interrupted and the next request finishes it.
        unfinished_erasure = bool(ledger.get_meta("erase_pending"))
        ledger.set_meta("erase_pending", True)
        # Marked in the deletion's own transaction, cleared only after a successful WAL scrub:
        # a crash before the scrub leaves it for the next open and for audit to see.
        pending = ledger.mark_scrub_pending(request_id)
        cells = plan.cells
        new_version = ledger.bump_versions(cells)
        ledger.scrub_samples({sid: new_version[cell] for sid, cell in plan.new.items()},
                             request_id)
        hit = set(cells)
        erased = [r for r in ledger.stages("live") if any((r.shard, s) in hit for s in r.prefix)]
        routes_before = ledger.routes()
        ledger.erase_stages([r.key for r in erased], reason=request_id)
        erased_keys = {r.key for r in erased}
        routes_after = ledger.refresh_routes(n_shards, servable)
        certificate = {
            "request_id": request_id,
            "time": now(),
            "samples": sorted(plan.new),
            "already_deleted": plan.already_deleted,
            "groups_hmac": sorted(ledger.group_hash(g) for g in plan.groups),
            "cells": [{"shard": sh, "slice": sl, "new_version": new_version[(sh, sl)]}
                      for sh, sl in cells],
            "erased_stages": sorted(erased_keys),
            "routes_before": {str(k): v for k, v in routes_before.items()},
            "routes_after": {str(k): v for k, v in routes_after.items()},
            "live_shards": sum(v is not None for v in routes_after.values()),
        }
        ledger.record_deletion(request_id, certificate["time"], certificate,  # links it
                               seal=None if signer is None else signer.seal_certificate)
        fault_point("forget:before-commit")
    # Committed: from here on the deletion holds even if the process dies; a later forget
    # or open finishes any erasure left undone. Nothing below may turn it into an error.
    fault_point("forget:after-commit")
    try:
        _erase(ledger, store, features, certificate, erased, new_version, unfinished_erasure)
        scrubbed = pending if certificate["ledger_scrubbed"] else []
    except Exception as err:  # recorded for the caller and finished by the next open
        scrubbed = pending if certificate.get("ledger_scrubbed") else []
        certificate["files_erased"] = False
        certificate["erase_error"] = f"{type(err).__name__}: {err}"
    certificate["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
    fault_point("forget:before-certificate")
    try:
        if signer is not None:
            signer.seal_outcome(certificate)
        _record_certificate(ledger, certificate, scrubbed)
        write_json_atomic(certificates_dir / f"{request_id}.json", certificate)
    except Exception as err:  # the ledger row written at commit still holds the deletion
        certificate["certificate_error"] = f"{type(err).__name__}: {err}"
    return plan, certificate


def _erase(ledger: Ledger, store: StageStore, features: FeatureFiles | None, certificate: dict,
           erased: list[StageRecord], new_version: dict[tuple[int, int], int],
           unfinished_erasure: bool) -> None:
    """Scrub the WAL, erase the invalidated stages' files and the hit cells' spilled features."""
    certificate["ledger_scrubbed"] = ledger.checkpoint()
    fault_point("forget:after-scrub")
    store.erase_all([(r.shard, r.key) for r in erased])
    fault_point("forget:after-erase")
    # Spilled feature-cache blocks of the hit cells hold the deleted inputs in derived form;
    # after an interrupted request, those of every cell.
    cells_to_clean = ledger.slice_versions() if unfinished_erasure else new_version
    stale_blocks = features.erase_stale(cells_to_clean) if features is not None else []
    certificate["feature_blocks_erased"] = len(stale_blocks)
    if unfinished_erasure:
        certificate["files_erased"] = erase_invalidated(ledger, store)
    else:
        certificate["files_erased"] = not any(store.path(r.shard, r.key).exists() for r in erased)
    if features is not None and features.stale(cells_to_clean):
        certificate["files_erased"] = False


def _record_certificate(ledger: Ledger, certificate: dict, scrubbed: list[str]) -> None:
    # The certificate's final fields need no fsync of their own: the deletion itself is
    # already durable, and the JSON file is written and synced.
    ledger.conn.execute("PRAGMA synchronous=NORMAL")
    try:
        with ledger.transaction():
            ledger.update_certificate(certificate["request_id"], certificate)
            ledger.clear_scrubbed(scrubbed)  # committed before a checkpoint that succeeded
            if certificate.get("files_erased"):
                ledger.clear_meta("erase_pending")
    finally:
        ledger.conn.execute("PRAGMA synchronous=FULL")


def erase_invalidated(ledger: Ledger, store: StageStore) -> bool:
    """Erase the files of every erased stage still on disk; True when none is left."""
    store.erase_all([(r.shard, r.key) for r in ledger.stages("erased")])
    return all(not store.path(r.shard, r.key).exists() for r in ledger.stages("erased"))


def sweep(ledger: Ledger, store: StageStore, features: FeatureFiles | None = None,
          writer_active: bool = False) -> list[str]:
    """Finish what crashes left: erase the stage directories of erased stages and stale
    feature-cache blocks; when no writer (fit or retrain) is running, also half-written or
    half-erased stage directories and stage directories the ledger never committed.
    Entries s3t did not make are left alone (``audit`` reports them)."""
    records = {(r.shard, r.key): r.status for r in ledger.stages(None)}
    removed = []
    for shard, key in store.on_disk():
        status = records.get((shard, key))
        ours = status == "erased" or (status is None and not writer_active)
        if ours and store.erase(shard, key):
            removed.append(key)
    if not writer_active:
        for leftover in store.leftovers():
            store.erase_leftover(leftover)
            removed.append(str(leftover))
    if features is not None:
        stale = features.erase_stale(ledger.slice_versions()) + features.erase_orphans()
        removed += [str(path) for path in stale]
    return removed
