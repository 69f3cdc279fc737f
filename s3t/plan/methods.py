"""Training methods: which layer groups a stage trains and switches on, and what may serve.

- ``s3t``: stage ``p`` switches on layer groups ``1..p`` (from the top; ``p+1..L`` are off)
  and trains group ``p`` only (the paper's equal allocation) or, ``growing``, groups ``1..p``
  continued from its ancestors, so a deeper stage, trained on more slices, owns more layers.
  Either way a stage depends only on its prefix's slices; any surviving prefix serves
  (deletion = deactivation).
- ``sisa``: the SISA baseline. Stage ``p`` is the checkpoint after slice ``p``: the whole
  adapter stack trained on slices ``1..p``, starting from checkpoint ``p-1``. Only the
  full-depth checkpoint serves: a deletion takes the shard out of service until it is
  retrained from the last checkpoint before the affected slice.
- ``full``: one model on all the data (one shard, one slice); a deletion retrains it.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("s3t", "sisa", "full")


@dataclass(frozen=True)
class Method:
    name: str
    n_groups: int
    growing: bool = False

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.name!r}")

    @property
    def layerwise(self) -> bool:
        return self.name == "s3t"

    def active_groups(self, depth: int) -> int:
        """How many layer groups (from the top) run with adapters at a stage of this depth."""
        if depth == 0:
            return 0
        return depth if self.layerwise else self.n_groups

    def trained_groups(self, depth: int) -> tuple[int, ...]:
        if not self.layerwise:
            return tuple(range(1, self.n_groups + 1))
        return tuple(range(1, depth + 1)) if self.growing else (depth,)

    def fresh_groups(self, depth: int) -> tuple[int, ...]:
        """Groups a stage of this depth starts from a fresh initialisation; the others it
        trains continue from its ancestors (SISA: the previous checkpoint)."""
        if self.layerwise:
            return (depth,)
        return self.trained_groups(depth) if depth == 1 else ()

    def servable(self, depth: int) -> bool:
        return depth >= 1 if self.layerwise else depth == self.n_groups
