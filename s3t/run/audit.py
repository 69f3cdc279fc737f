"""Auditing: re-derive every stage's lineage from the ledger and check it, the routes and the
files on disk against the exactness invariant; take damaged stages out of service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from s3t.run.files import FeatureFiles, IntegrityError, StageStore
from s3t.run.ledger import Ledger
from s3t.run.stages import StageRecord, lineage_chain


@dataclass
class AuditReport:
    ok: bool
    violations: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "violations": self.violations, "checked": self.checked}


def contaminated(record: StageRecord, deleted_by_cell: dict[tuple[int, int], list[int]]) -> bool:
    """Whether a stage's lineage contains a deleted sample.

    Its lineage is every sample present in its cells at the versions it recorded; a sample
    deleted at version ``v`` was present at every version below ``v``.
    """
    return any(dv > version
               for s, version in zip(record.prefix, record.versions, strict=True)
               for dv in deleted_by_cell.get((record.shard, s), []))


def audit(ledger: Ledger, store: StageStore, features: FeatureFiles | None = None) -> AuditReport:
    violations: list[str] = []
    deleted = ledger.deleted_samples()
    deleted_by_cell: dict[tuple[int, int], list[int]] = {}
    for _, shard, sl, dv in deleted:
        deleted_by_cell.setdefault((shard, sl), []).append(dv)
    for sid in ledger.leaked_inputs():
        violations.append(f"deleted sample {sid} still has its input or label in the ledger")
    if ledger.pending_scrubs() and not ledger.scrub():
        violations.append("the ledger's write-ahead log may still hold deleted inputs: another "
                          "process keeps a read transaction open; close it and audit again")

    records = {r.key: r for r in ledger.stages(None)}
    live = {k: r for k, r in records.items() if r.status == "live"}
    for record in live.values():
        if contaminated(record, deleted_by_cell):
            violations.append(f"live stage {record.key} was trained on a deleted sample")
        try:
            store.verify(record.shard, record.key, record.files)
        except IntegrityError as err:
            violations.append(str(err))

    routes = ledger.routes()
    for shard, key in routes.items():
        if key is None:
            continue
        if key not in records:
            violations.append(f"shard {shard} routes to unknown stage {key}")
            continue
        for link in lineage_chain(key, records):
            if link.status != "live":
                violations.append(f"shard {shard} serves stage {key}, built on erased {link.key}")
            elif contaminated(link, deleted_by_cell):
                violations.append(f"shard {shard} serves {link.key}, trained on a deleted sample")

    on_disk = store.on_disk()
    for shard, key in on_disk:
        if key not in live or live[key].shard != shard:
            state = records[key].status if key in records else "unknown to the ledger"
            violations.append(f"stage files on disk for {key} ({state}): {store.path(shard, key)}")

    for entry in store.unknown():
        violations.append(f"unknown entry in the stage store: {entry} (s3t did not make it and "
                          "cannot vouch for it; move it out of the run directory)")
    for entry in store.leftovers():
        violations.append(f"half-written or half-erased stage directory: {entry} (opening the "
                          "run while no retrain runs removes it)")

    blocks = features.cell_blocks() if features is not None else []
    for path in features.stale(ledger.slice_versions()) if features is not None else []:
        violations.append(f"feature-cache files of a cell a deletion changed: {path}")
    for owner in features.orphans() if features is not None else []:
        violations.append(f"feature-cache folder of a process that is gone: {owner} "
                          "(opening the run with repair removes it)")

    checked = {"stages": len(records), "live_stages": len(live), "deleted_samples": len(deleted),
               "routes": len(routes), "stage_dirs": len(on_disk), "feature_cache_blocks": len(blocks)}
    return AuditReport(ok=not violations, violations=violations, checked=checked)


def quarantine_damaged(ledger: Ledger, store: StageStore, n_shards: int,
                       servable: Callable[[int], bool] = lambda depth: True) -> list[str]:
    """Take live stages whose files fail their hash check out of service and erase them;
    return their keys. Their descendants stop serving too (routes need a live chain)."""
    damaged = []
    for record in ledger.stages("live"):
        try:
            store.verify(record.shard, record.key, record.files)
        except IntegrityError:
            damaged.append(record)
    if damaged:
        with ledger.transaction():
            ledger.erase_stages([r.key for r in damaged], reason="integrity")
            ledger.refresh_routes(n_shards, servable)
        store.erase_all([(r.shard, r.key) for r in damaged])
    return [r.key for r in damaged]
