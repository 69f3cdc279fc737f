"""Stage records, their keys, and routing (which stage each shard serves): pure functions,
no I/O, shared by the ledger, forget, audit and serving."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StageRecord:
    key: str
    shard: int
    prefix: tuple[int, ...]
    versions: tuple[int, ...]
    parent: str | None
    status: str
    files: dict[str, str]
    n_samples: int
    val_score: float | None

    @property
    def depth(self) -> int:
        return len(self.prefix)


def stage_key(shard: int, prefix: Sequence[int], versions: Sequence[int]) -> str:
    """Stage identity: shard, slices in order, and each slice's content version."""
    return f"{shard}-" + "_".join(f"{s}v{v}" for s, v in zip(prefix, versions, strict=True))


def best_stage(candidates: Iterable[StageRecord]) -> StageRecord | None:
    """Deepest surviving stage; ties go to the better validation score, then the key."""
    ranked = sorted(candidates, key=lambda r: (-r.depth, -(r.val_score or 0.0), r.key))
    return ranked[0] if ranked else None


def compute_routes(live: Iterable[StageRecord], n_shards: int,
                   servable: Callable[[int], bool] = lambda depth: True) -> dict[int, str | None]:
    """Each shard's route among its live, servable stages whose every ancestor is live too
    (``None``: the shard is dead)."""
    by_key = {r.key: r for r in live}

    def chain_live(record: StageRecord) -> bool:
        while record.parent is not None:
            if record.parent not in by_key:
                return False
            record = by_key[record.parent]
        return True

    by_shard: dict[int, list[StageRecord]] = {m: [] for m in range(n_shards)}
    for record in by_key.values():
        if servable(record.depth) and chain_live(record):
            by_shard[record.shard].append(record)
    routes: dict[int, str | None] = {}
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
