"""One deletion request as records: what was asked (``DeletionRequest``), what it deletes
(``ForgetPlan``, validated completely before any change) and what its commit did
(``DeletionCommit``). ``Ledger.commit_deletion`` plans and commits inside one transaction;
``forget`` erases files afterwards. Pure: the ledger is only read, through the methods named.

The replay rule (one, applied by the ledger inside the deletion's transaction): a request is
answered with an earlier certificate, and commits nothing, when

* its client key (``request_id`` over HTTP) is recorded in the ledger for the same body
  (the key is recorded in the transaction that commits its deletion, so a crash can never
  leave a committed deletion whose key is unknown), or
* it has no recorded key, deletes nothing new, and one earlier request deleted everything it
  names (re-issuing a request without a key is safe).

A recorded key with another body is refused (``RequestKeyConflict``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s3t.run.certificate import Certificate
    from s3t.run.ledger import Ledger
    from s3t.run.stages import StageRecord


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


#: Where the ledger's ``samples`` table puts an anchor sample (``S3TConfig.anchor``): no shard's
#: cell, since every shard trains on it in its first slice; never deletable.
ANCHOR_CELL = (-1, -1)


class RequestKeyConflict(ForgetRequestError):
    """A client request key was recorded before for another request body."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class DeletionRequest:
    """What a caller asks to delete; ``client_key``: the caller's idempotency key, if any;
    ``x_request_id``: the id the caller's log lines carry (over HTTP, the request's
    X-Request-ID). Both go into the certificate (``client_request_id``, ``x_request_id``),
    which is otherwise as before: a certificate without them has neither field."""

    sample_ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    client_key: str | None = None
    x_request_id: str | None = None

    @classmethod
    def of(cls, sample_ids: Sequence[str] | str | None, groups: Sequence[str] | str | None,
           client_key: str | None = None, x_request_id: str | None = None) -> DeletionRequest:
        ids = [sample_ids] if isinstance(sample_ids, str) else list(sample_ids or [])
        keys = [groups] if isinstance(groups, str) else list(groups or [])
        return cls(tuple(str(i) for i in ids), tuple(str(g) for g in keys), client_key,
                   x_request_id)

    def fingerprint(self, secret: str) -> str:
        """HMAC-SHA256 (the run's secret) of the canonical body: sorted, de-duplicated ids and
        group keys. Keyed, as group keys are in the ledger: a short group key cannot be found
        from the fingerprint by hashing guesses."""
        canonical = json.dumps({"sample_ids": sorted(set(self.sample_ids)),
                                "groups": sorted(set(self.groups))},
                               sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return hmac.new(bytes.fromhex(secret), digest.encode(), hashlib.sha256).hexdigest()


@dataclass
class ForgetPlan:
    new: dict[str, tuple[int, int]]          # sample id -> cell, not yet deleted
    already_deleted: list[str]
    groups: list[str]
    #: None: this request committed; else why it was answered with an earlier certificate
    #: (``"client-key"`` or ``"same-samples"``, the module's replay rule)
    replay: str | None = None

    @property
    def cells(self) -> list[tuple[int, int]]:
        return sorted(set(self.new.values()))


@dataclass
class DeletionCommit:
    """What ``Ledger.commit_deletion`` did: the certificate (as committed, or the earlier one
    a replay is answered with) and what the erasure after the commit needs."""

    plan: ForgetPlan
    certificate: Certificate
    erased: list[StageRecord] = field(default_factory=list)
    new_version: dict[tuple[int, int], int] = field(default_factory=dict)
    unfinished_erasure: bool = False       # an earlier request's erasure was interrupted
    scrub_marks: list[str] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return self.plan.replay is None


def _shown(items: list[str]) -> str:
    return ", ".join(items[:20]) + (f" (and {len(items) - 20} more)" if len(items) > 20 else "")


def plan_forget(ledger: Ledger, request: DeletionRequest) -> ForgetPlan:
    """Validate a request completely; raise ``ForgetRequestError`` before any change."""
    ids, group_keys = list(request.sample_ids), list(request.groups)
    if not ids and not group_keys:
        raise EmptyRequestError("empty deletion request: give at least one sample id or group")
    found = ledger.find_samples(ids)
    unknown = sorted(set(ids) - set(found))
    validation = sorted(set(unknown) & ledger.eval_ids(unknown))
    if validation:
        raise ValidationSampleError(
            f"validation samples cannot be forgotten: {_shown(validation)}. They are never "
            "deletable because every stage's validation score (which picks routes among equally "
            "deep stages, and with ensemble 'validation' weighs the shards) was computed on "
            "them; to remove one, train a new run without it "
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
    anchors = sorted(sid for sid, cell in new.items() if cell == ANCHOR_CELL)
    if anchors:
        raise UndeletableSampleError(
            f"anchor samples cannot be forgotten: {_shown(anchors)}. The training data marked "
            "them deletable=false and the run was trained with anchor, so they are in every "
            "shard (each shard's first slice): forgetting one would invalidate every stage of "
            "every shard. To remove one, train a new run with it marked deletable (or without "
            "it); nothing was deleted")
    kept = ledger.undeletable(list(new))
    if kept:
        raise UndeletableSampleError(
            f"samples marked deletable=false cannot be forgotten: {_shown(kept)}. The training "
            "data declared them never deleted (licensed, public or consented-forever data), so "
            "placement by prior put them in the first slices that every deeper stage builds "
            "on (with anchor, they are in every shard); to remove one, train a new run with it "
            "marked deletable (or without it); nothing was deleted")
    already = sorted(sid for sid, (_, _, dv) in found.items() if dv is not None)
    return ForgetPlan(new=new, already_deleted=already, groups=group_keys)
