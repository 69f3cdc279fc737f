"""One deletion certificate as a typed, immutable record: what the run commits, links, signs,
stores in the ledger and writes to ``certificates/<request-id>.json``.

Its JSON (``to_dict``) is the certificate as every version of s3t wrote it, so the bytes that
are hashed into the chain, signed and written to files are unchanged for the same content
(``tests/data/certificates-main.json`` holds real certificates and pins that). A field that
was absent stays absent: ``None`` here means "not in the JSON", except ``previous_sha256``,
which a linked certificate always carries (``null`` on the first). Keys an older version
wrote that this one does not know (e.g. the first version's plain ``groups``) are kept in
``extra``, verbatim.

Each change after the commit is a named step returning a new record: ``linked`` (the
chain), ``with_signature`` (the run key), ``erasure`` / ``timed`` / ``settled`` /
``certificate_failed`` (the outcome). ``from_dict`` refuses a record that lacks a field or
holds one of the wrong type (``CertificateRecordError``); checks that must *report* damage
(audit, ``certificates --verify``) read the stored JSON itself (``Ledger.stored_certificates``).

The HTTP contract's ``s3t.contract.Certificate`` mirrors these fields (it may not import the
run); ``tests/test_certificate_record.py`` checks they agree field by field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from s3t.run.chain import ChainHead, DeletionLogError, certificate_sha256


class CertificateRecordError(DeletionLogError):
    """A stored certificate lacks a field or holds one of the wrong type: the deletion log
    was altered (the run's own steps refuse it; audit reports it)."""


def _check(ok: bool, name: str, want: str, value: object) -> None:
    if not ok:
        raise CertificateRecordError(f"certificate field `{name}` must be {want}, not "
                                     f"{json.dumps(value)[:80]}: the record was altered")


def _str(d: Mapping, name: str, optional: bool = False, nullable: bool = False) -> Any:
    """``d[name]`` if a string; ``optional``: may be absent (None); ``nullable``: may be null.
    A field that is optional but not nullable is refused as null: None means "absent" here,
    and the record must write back exactly what it read."""
    if optional and name not in d:
        return None
    value = d.get(name)
    _check(isinstance(value, str) or (nullable and value is None), name, "a string", value)
    return value


def _int(d: Mapping, name: str, optional: bool = False) -> Any:
    if optional and name not in d:
        return None
    value = d.get(name)
    _check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
    return value


def _of(d: Mapping, name: str, kind: type, want: str) -> Any:
    """An optional field of exactly ``kind`` (bool is not an int, an int not a float)."""
    if name not in d:
        return None
    value = d[name]
    _check(type(value) is kind, name, want, value)
    return value


def _strs(d: Mapping, name: str, optional: bool = False) -> Any:
    if optional and name not in d:
        return None
    value: Any = d.get(name)
    _check(isinstance(value, list) and all(isinstance(v, str) for v in value), name,
           "a list of strings", value)
    return tuple(value)


def _nested(name: str, parse: Callable[[Any], Any], value: object) -> Any:
    """``parse(value)``, naming the field inside ``name`` when it is refused."""
    try:
        return parse(value)
    except CertificateRecordError as err:
        message = str(err)
        if f"field `{name}`" not in message:
            message = message.replace("field `", f"field `{name}.", 1)
        raise CertificateRecordError(message) from None


def _routes(d: Mapping, name: str) -> dict[str, str | None]:
    value: Any = d.get(name)
    _check(isinstance(value, dict) and all(v is None or isinstance(v, str)
                                           for v in value.values()),
           name, "an object of shard -> stage key or null", value)
    return dict(value)


@dataclass(frozen=True)
class CellVersion:
    """A cell the deletion hit and its content version after it."""

    shard: int
    slice: int
    new_version: int

    def to_dict(self) -> dict:
        return {"shard": self.shard, "slice": self.slice, "new_version": self.new_version}

    @classmethod
    def from_dict(cls, d: object) -> CellVersion:
        _check(isinstance(d, dict) and set(d) == {"shard", "slice", "new_version"}, "cells",
               "a list of {shard, slice, new_version}", d)
        assert isinstance(d, dict)
        return cls(_int(d, "shard"), _int(d, "slice"), _int(d, "new_version"))


@dataclass(frozen=True)
class Signature:
    """The run key's Ed25519 signatures (``s3t.run.signing``): ``record`` of the chained
    part, ``outcome`` of the whole certificate once its outcome is written."""

    key_id: str
    record: str
    outcome: str | None = None

    def to_dict(self) -> dict:
        out = {"key_id": self.key_id, "record": self.record}
        if self.outcome is not None:
            out["outcome"] = self.outcome
        return out

    @classmethod
    def from_dict(cls, d: object) -> Signature:
        _check(isinstance(d, dict) and set(d) <= {"key_id", "record", "outcome"}, "signature",
               "{key_id, record[, outcome]}", d)
        assert isinstance(d, dict)
        return cls(_str(d, "key_id"), _str(d, "record"), _str(d, "outcome", optional=True))


@dataclass(frozen=True)
class ReplayedDeletion:
    """A restore re-applied this deletion (from the replay source) as ``replayed_as``."""

    request_id: str
    sequence: int
    sha256: str
    samples: int
    replayed_as: str

    def to_dict(self) -> dict:
        return {"request_id": self.request_id, "sequence": self.sequence,
                "sha256": self.sha256, "samples": self.samples, "replayed_as": self.replayed_as}

    @classmethod
    def from_dict(cls, d: object) -> ReplayedDeletion:
        _check(isinstance(d, dict) and set(d) == {f.name for f in fields(cls)}, "replayed",
               "a list of {request_id, sequence, sha256, samples, replayed_as}", d)
        assert isinstance(d, dict)
        return cls(_str(d, "request_id"), _int(d, "sequence"), _str(d, "sha256"),
                   _int(d, "samples"), _str(d, "replayed_as"))


@dataclass(frozen=True)
class Restore:
    """What a restore certificate (``s3t restore``) adds: ``kind`` is ``restore`` or
    ``restore-gap`` (no replay; ``gap`` says what may be back)."""

    kind: str
    backup_chain_head: ChainHead
    replay_source: str | None
    replayed: tuple[ReplayedDeletion, ...]
    gap: str | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind,
                               "backup_chain_head": self.backup_chain_head.to_meta(),
                               "replay_source": self.replay_source,
                               "replayed": [r.to_dict() for r in self.replayed]}
        if self.gap is not None:
            out["gap"] = self.gap
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Restore:
        head = ChainHead.from_meta(d.get("backup_chain_head"))
        _check(head is not None and set(d["backup_chain_head"]) == {"sequence", "sha256"},
               "backup_chain_head", "{sequence, sha256}", d.get("backup_chain_head"))
        assert head is not None
        _check("replay_source" in d, "replay_source", "present", None)
        replayed: Any = d.get("replayed")
        _check(isinstance(replayed, list), "replayed", "a list", replayed)
        return cls(_str(d, "kind"), head, _str(d, "replay_source", nullable=True),
                   tuple(_nested("replayed", ReplayedDeletion.from_dict, r) for r in replayed),
                   _str(d, "gap", optional=True))


_RESTORE_KEYS = ("kind", "backup_chain_head", "replay_source", "replayed", "gap")


@dataclass(frozen=True)
class Certificate:
    """The receipt of one deletion (or of a restore): its chained part, its place on the
    chain, its signature, and its outcome (``None``: not recorded yet)."""

    request_id: str
    time: str
    samples: tuple[str, ...]
    erased_stages: tuple[str, ...]
    routes_before: dict[str, str | None]
    routes_after: dict[str, str | None]
    live_shards: int
    already_deleted: tuple[str, ...] | None = None
    groups_hmac: tuple[str, ...] | None = None
    groups_sha256: tuple[str, ...] | None = None     # issued before keyed group hashes
    cells: tuple[CellVersion, ...] | None = None
    #: the request as its caller knows it: the idempotency key, the caller's log id
    client_request_id: str | None = None
    x_request_id: str | None = None
    restore: Restore | None = None
    # the chain: linked iff ``sequence`` is set (``previous_sha256`` None: the first)
    sequence: int | None = None
    previous_sha256: str | None = None
    signature: Signature | None = None
    # the outcome (chain.OUTCOME_FIELDS), written after the commit
    ledger_scrubbed: bool | None = None
    feature_blocks_erased: int | None = None
    files_erased: bool | None = None
    erase_error: str | None = None
    duration_ms: float | None = None
    certificate_error: str | None = None
    #: keys an older version wrote that this one does not know, kept verbatim
    extra: Mapping[str, Any] = field(default_factory=dict)

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The certificate's JSON object, keys in the order s3t has always written them."""
        out: dict[str, Any] = {"request_id": self.request_id, "time": self.time,
                               "samples": list(self.samples)}
        for name in ("already_deleted", "groups_hmac", "groups_sha256"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value)
        if self.cells is not None:
            out["cells"] = [c.to_dict() for c in self.cells]
        out.update(erased_stages=list(self.erased_stages), routes_before=dict(self.routes_before),
                   routes_after=dict(self.routes_after), live_shards=self.live_shards)
        for name in ("client_request_id", "x_request_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.restore is not None:
            out.update(self.restore.to_dict())
        if self.sequence is not None:
            out.update(sequence=self.sequence, previous_sha256=self.previous_sha256)
        if self.signature is not None:
            out["signature"] = self.signature.to_dict()
        for name in ("ledger_scrubbed", "feature_blocks_erased", "files_erased", "erase_error",
                     "duration_ms", "certificate_error"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        """As the ledger stores it."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: object) -> Certificate:
        """Read a stored certificate; ``CertificateRecordError`` when it is not one."""
        _check(isinstance(d, dict), "(the record)", "a JSON object", d)
        assert isinstance(d, dict)
        known = {f.name for f in fields(cls)} - {"restore", "extra"} | set(_RESTORE_KEYS)
        cells = d.get("cells")
        _check("cells" not in d or isinstance(cells, list), "cells", "a list", cells)
        _check("sequence" not in d or "previous_sha256" in d, "previous_sha256",
               "present on a linked certificate", None)
        _check("previous_sha256" not in d or "sequence" in d, "sequence",
               "present on a linked certificate", None)
        _check("kind" in d or not set(_RESTORE_KEYS) & set(d), "kind",
               "present on a restore certificate", None)
        _check("signature" not in d or isinstance(d["signature"], dict), "signature",
               "an object", d.get("signature"))
        return cls(
            request_id=_str(d, "request_id"), time=_str(d, "time"),
            samples=_strs(d, "samples"), erased_stages=_strs(d, "erased_stages"),
            routes_before=_routes(d, "routes_before"), routes_after=_routes(d, "routes_after"),
            live_shards=_int(d, "live_shards"),
            already_deleted=_strs(d, "already_deleted", optional=True),
            groups_hmac=_strs(d, "groups_hmac", optional=True),
            groups_sha256=_strs(d, "groups_sha256", optional=True),
            cells=None if cells is None else tuple(_nested("cells", CellVersion.from_dict, c)
                                                    for c in cells),
            client_request_id=_str(d, "client_request_id", optional=True),
            x_request_id=_str(d, "x_request_id", optional=True),
            restore=Restore.from_dict(d) if "kind" in d else None,
            sequence=_int(d, "sequence", optional=True),
            previous_sha256=_str(d, "previous_sha256", optional=True, nullable=True),
            signature=_nested("signature", Signature.from_dict, d["signature"])
            if "signature" in d else None,
            ledger_scrubbed=_of(d, "ledger_scrubbed", bool, "true or false"),
            feature_blocks_erased=_int(d, "feature_blocks_erased", optional=True),
            files_erased=_of(d, "files_erased", bool, "true or false"),
            erase_error=_str(d, "erase_error", optional=True),
            duration_ms=_of(d, "duration_ms", float, "a number with a fraction"),
            certificate_error=_str(d, "certificate_error", optional=True),
            extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        return cls.from_dict(json.loads(text))

    # --- the chain and the signature --------------------------------------------------------
    @property
    def linked(self) -> bool:
        return self.sequence is not None

    def sha256(self) -> str:
        """The chain digest (``s3t.run.chain.certificate_sha256``)."""
        return certificate_sha256(self.to_dict())

    def link(self, head: ChainHead) -> tuple[Certificate, ChainHead]:
        """This certificate put after ``head`` on the chain, and the new head."""
        linked = replace(self, sequence=head.sequence + 1, previous_sha256=head.sha256)
        return linked, ChainHead(head.sequence + 1, linked.sha256())

    def with_signature(self, signature: Signature) -> Certificate:
        return replace(self, signature=signature)

    # --- the outcome ------------------------------------------------------------------------
    def erasure(self, *, ledger_scrubbed: bool | None, feature_blocks_erased: int | None,
                files_erased: bool, erase_error: str | None = None) -> Certificate:
        """What erasing after the commit did (``None``: that step was not reached)."""
        return replace(self, ledger_scrubbed=ledger_scrubbed,
                       feature_blocks_erased=feature_blocks_erased, files_erased=files_erased,
                       erase_error=erase_error)

    def timed(self, duration_ms: float) -> Certificate:
        return replace(self, duration_ms=duration_ms)

    def settled(self) -> Certificate:
        """A later open found the files gone and the write-ahead log scrubbed."""
        return replace(self, files_erased=True, ledger_scrubbed=True)

    def certificate_failed(self, error: str) -> Certificate:
        """Recording the outcome or writing the file failed (the deletion still holds)."""
        return replace(self, certificate_error=error)


#: How a caller seals a linked certificate before it is stored (``Signer.seal_record``).
Seal = Callable[[Certificate], Certificate]
