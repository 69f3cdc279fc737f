"""Routing: which stage each shard serves. Pure functions over ledger records."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from s3t.data.ledger import StageRecord


def best_stage(candidates: Iterable[StageRecord]) -> StageRecord | None:
    """Deepest surviving stage; ties go to the better validation score, then the key."""
    ranked = sorted(candidates, key=lambda r: (-r.depth, -(r.val_score or 0.0), r.key))
    return ranked[0] if ranked else None


def compute_routes(live: Iterable[StageRecord], n_shards: int,
                   servable: Callable[[int], bool] = lambda depth: True) -> dict[int, str | None]:
    """Each shard's route among its live, servable stages whose every ancestor is live too
    (``None``: the shard is dead)."""
    live = list(live)
    keys = {r.key for r in live}
    by_key = {r.key: r for r in live}

    def chain_live(record: StageRecord) -> bool:
        while record.parent is not None:
            if record.parent not in keys:
                return False
            record = by_key[record.parent]
        return True

    by_shard: dict[int, list[StageRecord]] = {m: [] for m in range(n_shards)}
    for record in live:
        if servable(record.depth) and chain_live(record):
            by_shard[record.shard].append(record)
    routes = {}
    for m, records in by_shard.items():
        best = best_stage(records)
        routes[m] = None if best is None else best.key
    return routes


def lineage_chain(key: str, records: dict[str, StageRecord]) -> list[StageRecord]:
    """The stages a route is built from, root first."""
    chain = []
    current: str | None = key
    while current is not None:
        record = records[current]
        chain.append(record)
        current = record.parent
    return chain[::-1]
