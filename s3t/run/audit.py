"""Auditing: re-derive every stage's lineage from the ledger and check it, the routes, the
files on disk and the deletion log against the exactness invariant; take the live stages it
cannot vouch for out of service.

No blind spots: every live stage's files are exactly the ones its ledger row records, their
hashes match, its ``meta.json`` agrees with the row, its key agrees with its slice versions and
no certificate erased it; every path under ``stages/`` and ``feature-cache/`` belongs to a live
stage or a current block; the certificate chain is unbroken from the first certificate to the
ledger's head and every certificate file equals the ledger's copy. Each finding names the
problem and its fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from s3t.run.certificate import Certificate, CertificateRecordError
from s3t.run.certificates import file_problems
from s3t.run.chain import RESTORE, chain_problems
from s3t.run.files import META_FILE, FeatureFiles, IntegrityError, StageStore, tree_summary
from s3t.run.ledger import Ledger
from s3t.run.signing import certificate_problems, key_id, stage_payload, verify
from s3t.run.stages import StageRecord, lineage_chain, stage_key

#: How a live stage that fails a check is taken out of service and rebuilt.
REBUILD = "`s3t retrain RUN` takes it out of service and rebuilds it"
#: How routes are recomputed from the live stages.
REROUTE = "`s3t retrain RUN` recomputes the routes (and rebuilds what is missing)"
#: How a stray path is dealt with (s3t deletes only what the ledger names).
REMOVE = ("s3t deletes only what the ledger names, so remove it yourself (move it out of the "
          "run directory if it is yours)")


@dataclass
class AuditReport:
    ok: bool
    violations: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    #: whether the run's records are signed, in words (``unsigned`` when it has no key)
    signing: str = "unsigned"

    def to_dict(self) -> dict:
        return {"ok": self.ok, "violations": self.violations, "checked": self.checked,
                "signing": self.signing}


def contaminated(record: StageRecord, deleted_by_cell: dict[tuple[int, int], list[int]]) -> bool:
    """Whether a stage's lineage contains a deleted sample.

    Its lineage is every sample present in its cells at the versions it recorded; a sample
    deleted at version ``v`` was present at every version below ``v``.
    """
    return any(dv > version
               for s, version in zip(record.prefix, record.versions, strict=True)
               for dv in deleted_by_cell.get((record.shard, s), []))


def _deleted_by_cell(deleted: list[tuple[str, int, int, int]]) -> dict[tuple[int, int], list[int]]:
    by_cell: dict[tuple[int, int], list[int]] = {}
    for _, shard, sl, dv in deleted:
        by_cell.setdefault((shard, sl), []).append(dv)
    return by_cell


def _erased_by_certificate(certificates: list[dict]) -> dict[str, str]:
    """Stage key -> the deletion request whose certificate lists it as erased."""
    return {k: str(c.get("request_id")) for c in certificates for k in c.get("erased_stages", [])}


def stage_problems(record: StageRecord, store: StageStore, current: dict[tuple[int, int], int],
                   deleted_by_cell: dict[tuple[int, int], list[int]],
                   erased_by_certificate: dict[str, str], erased_marks: dict[str, str],
                   signatures: tuple[str, dict[str, str]] | None = None) -> list[str]:
    """Why a live stage cannot be vouched for (empty: it can): its files, its card, its key,
    its lineage, what the deletion log says about it and, for a signed run (``signatures``:
    the public key and the ledger's stage signatures), its signature."""
    problems = [] if signatures is None else stage_signature_problems(record, *signatures)
    key = record.key
    expected_key = stage_key(record.shard, record.prefix, record.versions)
    if expected_key != key:
        problems.append(
            f"live stage {key}: its ledger row says shard {record.shard}, slices "
            f"{list(record.prefix)} at versions {list(record.versions)}, which is stage "
            f"{expected_key}: the row was edited (versions or slices rewritten); {REBUILD}")
    depth = len(record.prefix)
    parent = stage_key(record.shard, record.prefix[:-1], record.versions[:-1]) if depth > 1 \
        else None
    if record.parent != parent:
        problems.append(f"live stage {key}: its ledger row names parent {record.parent}, its "
                        f"slices make it {parent}: the row was edited; {REBUILD}")
    ahead = [(s, v) for s, v in zip(record.prefix, record.versions, strict=True)
             if v > current.get((record.shard, s), -1)]
    if ahead:
        problems.append(f"live stage {key} records slice versions the ledger never reached "
                        f"({', '.join(f'slice {s} v{v}' for s, v in ahead)}): the row was "
                        f"edited; {REBUILD}")
    if contaminated(record, deleted_by_cell):
        problems.append(f"live stage {key} was trained on a deleted sample; {REBUILD}")
    if key in erased_by_certificate:
        problems.append(f"live stage {key} was erased by deletion request "
                        f"{erased_by_certificate[key]} (its certificate lists it), yet it is "
                        "live again: a stage a deletion erased never comes back (its slices "
                        f"changed); its row and files were restored by hand; {REBUILD}")
    elif key in erased_marks:
        problems.append(f"live stage {key} is marked erased by {erased_marks[key]} yet live: "
                        f"its status was set back by hand; {REBUILD}")
    try:
        files = store.read(record.shard, key, record.files)
    except IntegrityError as err:
        return [*problems, str(err)]
    problems += _card_problems(record, files[META_FILE], store.path(record.shard, key))
    return problems


def stage_signature_problems(record: StageRecord, public: str,
                             signatures: dict[str, str]) -> list[str]:
    """A signed run's live stage must carry the run key's signature of its record."""
    payload = stage_payload(record.key, record.shard, record.prefix, record.versions,
                            record.parent, record.files, record.n_samples, record.val_score)
    signature = signatures.get(record.key)
    if signature is None:
        return [f"live stage {record.key} is not signed, but the run signs its stage records "
                f"with key {key_id(public)}: it was committed without the key or forged; "
                f"{REBUILD}"]
    if not verify(public, payload, signature):
        return [f"live stage {record.key}: its record (row, file hashes) does not match its "
                f"signature by key {key_id(public)}: the stage or its row was altered; {REBUILD}"]
    return []


def _card_problems(record: StageRecord, card: bytes, where: Path) -> list[str]:
    """A stage's ``meta.json`` (written when it was trained, hash-checked) against its row."""
    try:
        meta = json.loads(card)
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        return [f"live stage {record.key}: {where / META_FILE} is not a JSON object; {REBUILD}"]
    expected = {"key": record.key, "shard": record.shard, "prefix": list(record.prefix),
                "versions": list(record.versions), "parent": record.parent,
                "n_samples": record.n_samples}
    differs = [f"{name} {meta.get(name, '(absent)')} vs {value}"
               for name, value in expected.items() if meta.get(name, "(absent)") != value]
    if not differs:
        return []
    return [f"live stage {record.key}: its meta.json disagrees with its ledger row "
            f"({'; '.join(differs)}; meta.json first): the row or the stage was altered; "
            f"{REBUILD}"]


def audit(ledger: Ledger, store: StageStore, features: FeatureFiles | None = None,
          certificates_dir: Path | None = None, public_key: str | None = None) -> AuditReport:
    """``public_key``: the run's signing key (its card's), whose signature every live stage
    and every certificate must carry; None: an unsigned run (reported as such)."""
    violations: list[str] = []
    signatures = None if public_key is None else (public_key, ledger.stage_signatures())
    deleted = ledger.deleted_samples()
    deleted_by_cell = _deleted_by_cell(deleted)
    for sid in ledger.leaked_inputs():
        violations.append(f"deleted sample {sid} still has its input or label in the ledger")
    if ledger.pending_scrubs() and (ledger.read_only or not ledger.scrub()):
        violations.append("the ledger's write-ahead log may still hold deleted inputs: another "
                          "process keeps a read transaction open; close it and audit again")

    certificates = ledger.stored_certificates()
    erased_by_certificate = _erased_by_certificate(certificates)
    current = ledger.slice_versions()
    records = {r.key: r for r in ledger.stages(None)}
    live = {k: r for k, r in records.items() if r.status == "live"}
    untrusted = set()
    marks = ledger.erased_marks()
    for record in live.values():
        problems = stage_problems(record, store, current, deleted_by_cell,
                                  erased_by_certificate, marks, signatures)
        violations += problems
        if problems:
            untrusted.add(record.key)

    routes = ledger.routes()
    for shard, key in routes.items():
        if key is None:
            continue
        if key not in records:
            violations.append(f"shard {shard} routes to unknown stage {key}; {REROUTE}")
            continue
        for link in lineage_chain(key, records):
            if link.status != "live":
                violations.append(f"shard {shard} serves stage {key}, built on erased {link.key}; "
                                  f"{REROUTE}")
            elif link.key in untrusted:
                violations.append(f"shard {shard} serves stage {key}, built on {link.key}, "
                                  f"which fails the checks above; {REBUILD}")

    on_disk = store.on_disk()
    for shard, key in on_disk:
        if key not in live or live[key].shard != shard:
            state = records[key].status if key in records else "unknown to the ledger"
            violations.append(f"stage files on disk for {key} ({state}): {store.path(shard, key)} "
                              "(opening the run while no retrain runs erases them)")
    for entry in store.strays({(r.shard, r.key): list(r.files) for r in live.values()}):
        violations.append(_stray_message(entry, records, live))
    for entry in store.leftovers():
        violations.append(f"half-written or half-erased stage directory: {entry} (opening the "
                          "run while no retrain runs removes it)")

    blocks = features.cell_blocks() if features is not None else []
    if features is not None:
        for path in features.stale(current):
            violations.append(f"feature-cache files of a cell a deletion changed: {path} "
                              "(opening the run removes them)")
        for owner in features.orphans():
            violations.append(f"feature-cache folder of a process that is gone: {owner} "
                              "(opening the run with repair removes it)")
        for path in features.strays(current):
            violations.append(f"stray entry {path} in the feature cache: not part of any "
                              f"current feature block; {REMOVE}")

    violations += _deletion_log_problems(ledger, certificates, certificates_dir)
    if public_key is not None:
        violations += [p for c in certificates for p in certificate_problems(public_key, c)]
    checked = {"stages": len(records), "live_stages": len(live), "deleted_samples": len(deleted),
               "routes": len(routes), "stage_dirs": len(on_disk), "feature_cache_blocks": len(blocks),
               "certificates": len(certificates)}
    signing = ("unsigned: this run has no signing key, so a forgery that rewrites the ledger "
               "consistently is not detected (`s3t keys attach RUN --signing-key FILE`)"
               if public_key is None else f"signed with ed25519 key {key_id(public_key)}")
    return AuditReport(ok=not violations, violations=violations, checked=checked,
                       signing=signing)


def _stray_message(entry: Path, records: dict[str, StageRecord],
                   live: dict[str, StageRecord]) -> str:
    """What a stray path under ``stages/`` is, and what to do with it."""
    details = []
    if entry.is_dir() and not entry.is_symlink():
        files, keys = tree_summary(entry)
        details.append(f"holds {files} file{'s' if files != 1 else ''}")
        keys = ([entry.name] if entry.name in records else []) + keys
        if keys:
            details.append("stage directories " + ", ".join(
                f"{k} ({records[k].status if k in records else 'unknown to the ledger'})"
                for k in keys))
    owner = live.get(entry.parent.name)
    if owner is not None and entry.parent.parent.name == str(owner.shard):
        details.append(f"inside the directory of live stage {owner.key}, for which the ledger "
                       f"records only {', '.join(sorted(owner.files)) or 'no files'}")
    kind = "file" if entry.is_file() and not entry.is_symlink() else \
        "link" if entry.is_symlink() else "entry"
    where = f" ({'; '.join(details)})" if details else ""
    return f"stray {kind} {entry}: not part of any live stage{where}; {REMOVE}"


def _deletion_log_problems(ledger: Ledger, certificates: list[dict],
                           certificates_dir: Path | None) -> list[str]:
    """The certificate chain, the certificates against the deleted samples, the group-key
    secret, and the certificate files."""
    problems = chain_problems(certificates, ledger.chain_head())
    if not ledger.has_group_secret():
        problems.append("the ledger has no group-key secret (table `secrets`): group keys can "
                        "no longer be matched to samples; restore ledger.sqlite from a backup")
    counted = ledger.deletion_requests()
    for certificate in certificates:
        request_id = str(certificate.get("request_id"))
        try:
            Certificate.from_dict(certificate)
        except CertificateRecordError as err:  # the run's own steps cannot read it either
            problems.append(f"certificate {request_id} is not a certificate record ({err}); "
                            f"{RESTORE}")
        listed = len(certificate.get("samples", []))
        if counted.get(request_id, 0) != listed:
            problems.append(f"certificate {request_id} lists {listed} deleted samples but the "
                            f"ledger records {counted.get(request_id, 0)} deleted by it; {RESTORE}")
    for request_id in sorted(set(counted) - {str(c.get("request_id")) for c in certificates}):
        problems.append(f"{counted[request_id]} samples were deleted by request {request_id}, "
                        f"which has no certificate in the ledger: it was removed; {RESTORE}")
    if certificates_dir is not None:
        problems += file_problems(certificates, certificates_dir)
    return problems


def quarantine_damaged(ledger: Ledger, store: StageStore, n_shards: int,
                       servable: Callable[[int], bool] = lambda depth: True,
                       public_key: str | None = None) -> list[str]:
    """Take every live stage that audit cannot vouch for (:func:`stage_problems`: damaged or
    missing files, a row or card that was altered, a stage a deletion erased) out of service
    and erase it; return their keys. Their descendants stop serving too (routes need a live
    chain)."""
    deleted_by_cell = _deleted_by_cell(ledger.deleted_samples())
    erased_by_certificate = _erased_by_certificate(ledger.stored_certificates())
    current, marks = ledger.slice_versions(), ledger.erased_marks()
    signatures = None if public_key is None else (public_key, ledger.stage_signatures())
    damaged = [record for record in ledger.stages("live")
               if stage_problems(record, store, current, deleted_by_cell, erased_by_certificate,
                                 marks, signatures)]
    if damaged:
        with ledger.transaction():  # a concurrent forget may have erased some meanwhile
            damaged = [r for r in damaged if ledger.is_live(r.key)]
            ledger.erase_stages([r.key for r in damaged], reason="integrity")
            ledger.refresh_routes(n_shards, servable)
        store.erase_all([(r.shard, r.key) for r in damaged])
    return [r.key for r in damaged]
