"""Stage records, their keys, and routing (which stage each shard serves): pure functions,
no I/O, shared by the ledger, forget, audit and serving."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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


def routing_rank(record: StageRecord) -> tuple[int, float, str]:
    """Routing order: deeper first, then the better validation score, then the key."""
    return -record.depth, -(record.val_score or 0.0), record.key


def best_stage(candidates: Iterable[StageRecord]) -> StageRecord | None:
    """Deepest surviving stage; ties go to the better validation score, then the key."""
    ranked = sorted(candidates, key=routing_rank)
    return ranked[0] if ranked else None


def chain_live(record: StageRecord, live: Mapping[str, StageRecord]) -> bool:
    """Whether every ancestor of ``record`` is in ``live``."""
    while record.parent is not None:
        if record.parent not in live:
            return False
        record = live[record.parent]
    return True


def compute_routes(live: Iterable[StageRecord], n_shards: int,
                   servable: Callable[[int], bool] = lambda depth: True) -> dict[int, str | None]:
    """Each shard's route among its live, servable stages whose every ancestor is live too
    (``None``: the shard is dead)."""
    by_key = {r.key: r for r in live}
    by_shard: dict[int, list[StageRecord]] = {m: [] for m in range(n_shards)}
    for record in by_key.values():
        if servable(record.depth) and chain_live(record, by_key):
            by_shard[record.shard].append(record)
    routes: dict[int, str | None] = {}
    for m, records in by_shard.items():
        best = best_stage(records)
        routes[m] = None if best is None else best.key
    return routes


def served_stages(routes: Mapping[int, str | None], records: Mapping[str, StageRecord],
                  serve_orderings: str = "best") -> dict[int, list[str]]:
    """Every stage each live shard serves, its route first (``records``: the run's stage
    records, any status). ``'best'``: the route alone. ``'all'``: also every other live stage
    of the shard as deep as the route whose ancestors are all live (one per surviving
    ordering's chain at that depth; prefix-sharing orderings share it), in routing order.
    Only live stages are ever named, so none saw a deleted sample."""
    live = {k: r for k, r in records.items() if r.status == "live"}
    out: dict[int, list[str]] = {}
    for shard, key in routes.items():
        if key is None:
            continue
        out[shard] = [key]
        if serve_orderings == "all":
            depth = records[key].depth
            peers = [r for r in live.values() if r.shard == shard and r.depth == depth
                     and r.key != key and chain_live(r, live)]
            out[shard] += [r.key for r in sorted(peers, key=routing_rank)]
    return out


def lineage_chain(key: str, records: dict[str, StageRecord]) -> list[StageRecord]:
    """The stages a route is built from, root first."""
    chain = []
    current: str | None = key
    while current is not None:
        record = records[current]
        chain.append(record)
        current = record.parent
    return chain[::-1]
