"""The stages one shard trains: a prefix tree over its orderings.

Stage ``(prefix)`` trains layer group ``len(prefix)`` on the union of the prefix's slices.
Orderings that share a prefix share its stages, so each distinct prefix trains once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from s3t.plan.orderings import check_orderings


@dataclass(frozen=True)
class StageNode:
    """One distinct stage: the ordered prefix it was trained on.

    ``parent`` is the prefix one shorter (``None`` for depth-1 stages, which start from the
    pretrained weights); ``slices`` is the prefix as a set, i.e. the stage's data lineage.
    """

    prefix: tuple[int, ...]
    parent: tuple[int, ...] | None
    depth: int
    slices: frozenset[int]


def _validate(orderings: Sequence[tuple[int, ...]]) -> int:
    n_slices = check_orderings(orderings)
    if len(set(orderings)) != len(orderings):
        raise ValueError("orderings must be distinct (a duplicate trains nothing new)")
    return n_slices


class PrefixTree:
    """Distinct stages of one shard, parents before children."""

    def __init__(self, orderings: Iterable[Sequence[int]]):
        self.orderings: list[tuple[int, ...]] = [tuple(int(s) for s in o) for o in orderings]
        self.n_slices = _validate(self.orderings)
        prefixes = {o[:k] for o in self.orderings for k in range(1, self.n_slices + 1)}
        self.stages: list[StageNode] = [
            StageNode(
                prefix=pre,
                parent=pre[:-1] if len(pre) > 1 else None,
                depth=len(pre),
                slices=frozenset(pre),
            )
            for pre in sorted(prefixes, key=lambda q: (len(q), q))
        ]
        self._by_parent: dict[tuple[int, ...], list[StageNode]] = {}
        for node in self.stages:
            self._by_parent.setdefault(node.prefix[:-1], []).append(node)


    def count(self) -> int:
        """Distinct stages to train, with prefix sharing."""
        return len(self.stages)

    def count_without_sharing(self) -> int:
        """Stages if every ordering trained from scratch: ``len(orderings) * L``."""
        return len(self.orderings) * self.n_slices

    def training_cost(self, n_samples: int, epochs: int = 1, sharing: bool = True) -> float:
        """Sample-passes to train the shard: a depth-``k`` stage sees ``k*n/L`` samples/epoch.

        ``n_samples`` is the shard's size. One ordering costs ``n(L+1)/2`` per epoch.
        """
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if sharing:
            depth_sum = sum(node.depth for node in self.stages)
        else:
            depth_sum = len(self.orderings) * self.n_slices * (self.n_slices + 1) // 2
        return depth_sum * n_samples / self.n_slices * epochs

    def children(self, prefix: Sequence[int]) -> list[StageNode]:
        """Stages that extend ``prefix`` by one slice (``()`` gives the depth-1 stages)."""
        return list(self._by_parent.get(tuple(prefix), []))

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return (
            f"PrefixTree(n_slices={self.n_slices}, orderings={len(self.orderings)}, "
            f"stages={self.count()})"
        )
