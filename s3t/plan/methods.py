"""Training methods: which layer groups a stage trains and switches on, and what may serve.

- ``s3t``: a stage of depth ``p`` trains on the union of its prefix's slices, and any
  surviving prefix serves (deletion = deactivation). Which adapted layer groups it trains
  is the ``allocation``: ``equal`` (the paper's) switches on groups ``1..p`` (from the top)
  and trains group ``p`` only; ``growing`` trains groups ``1..p``, continued from its
  ancestors, so a deeper stage, trained on more slices, owns more layers; ``all`` switches on
  and trains every group at every depth, continued from its ancestor (SISA's checkpoints,
  each of which may serve). Either way a stage depends only on its prefix's slices.
- ``sisa``: the SISA baseline. Stage ``p`` is the checkpoint after slice ``p``: the whole
  adapter stack trained on slices ``1..p``, starting from checkpoint ``p-1``. Only the
  full-depth checkpoint serves: a deletion takes the shard out of service until it is
  retrained from the last checkpoint before the affected slice.
- ``full``: one model on all the data (one shard, one slice); a deletion retrains it.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("s3t", "sisa", "full")
ALLOCATIONS = ("equal", "growing", "all")


@dataclass(frozen=True)
class Method:
    name: str
    n_groups: int
    allocation: str = "equal"  # S3T only: SISA and full train the whole stack per stage

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.name!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got "
                             f"{self.allocation!r}")

    @property
    def layerwise(self) -> bool:
        return self.name == "s3t"

    @property
    def whole_stack(self) -> bool:
        """Every stage switches on and trains every group (SISA, full, S3T ``all``)."""
        return not self.layerwise or self.allocation == "all"

    def active_groups(self, depth: int) -> int:
        """How many layer groups (from the top) run with adapters at a stage of this depth."""
        if depth == 0:
            return 0
        return self.n_groups if self.whole_stack else depth

    def trained_groups(self, depth: int) -> tuple[int, ...]:
        if self.whole_stack:
            return tuple(range(1, self.n_groups + 1))
        return tuple(range(1, depth + 1)) if self.allocation == "growing" else (depth,)

    def fresh_groups(self, depth: int) -> tuple[int, ...]:
        """Groups a stage of this depth starts from a fresh initialisation; the others it
        trains continue from its ancestors (SISA: the previous checkpoint)."""
        if self.whole_stack:
            return self.trained_groups(depth) if depth == 1 else ()
        return (depth,)

    def servable(self, depth: int) -> bool:
        return depth >= 1 if self.layerwise else depth == self.n_groups
