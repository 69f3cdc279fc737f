"""Cache of the frozen pretrained hidden states at every layer-group boundary.

The layers below a stage's trained group run with pure pretrained weights, so their
outputs are the same for every shard, ordering and stage: compute them once per sample.
Values are computed cell by cell (samples sorted by id, fixed chunks), so a sample's
features depend only on its cell's current contents; after a deletion the cell is
recomputed, and a retrained stage sees exactly what a from-scratch run would.
The cache holds nothing trained and lives in memory only.

When the backbone's ``encode`` returns token ``labels`` (causal LMs), each sample's labels are
kept beside its states and :meth:`FeatureCache.targets` pads them with -100 like the states.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from s3t.models.adapted import AdaptedBackbone

Features = dict[int, torch.Tensor]  # layer group -> (tokens, hidden) for one sample


class _Blocks:
    """Which samples each block (a cell, or the eval set) holds, and at which version."""

    def __init__(self) -> None:
        self._blocks: dict[Hashable, tuple[Hashable, list[str]]] = {}

    def _current(self, block: Hashable, version: Hashable) -> bool:
        """True if ``block`` is held at ``version``; otherwise drop what it held."""
        cached = self._blocks.get(block)
        if cached is not None and cached[0] == version:
            return True
        self.drop(block)
        return False

    def drop(self, block: Hashable) -> None:
        cached = self._blocks.pop(block, None)
        if cached is not None:
            for sid in cached[1]:
                self._discard(sid)

    def _discard(self, sid: str) -> None:
        raise NotImplementedError


class FeatureCache(_Blocks):
    def __init__(self, backbone: AdaptedBackbone, chunk_size: int = 64):
        super().__init__()
        self.backbone = backbone
        self.chunk_size = chunk_size
        self._samples: dict[str, Features] = {}
        self._targets: dict[str, torch.Tensor] = {}

    def ensure(self, block: Hashable, version: Hashable, ids: Sequence[str],
               inputs: Sequence) -> None:
        """Make sure the samples of ``block`` (a cell, or the eval set) are cached at ``version``."""
        if self._current(block, version):
            return
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        for start in range(0, len(order), self.chunk_size):
            chunk = order[start:start + self.chunk_size]
            batch = self.backbone.encode([inputs[i] for i in chunk])
            bounds = self.backbone.boundaries(batch)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(chunk):
                n = int(lengths[row])
                self._samples[ids[i]] = {g: h[row, :n].clone() for g, h in bounds.items()}
                if "labels" in batch:
                    self._targets[ids[i]] = batch["labels"][row, :n].clone()
        self._blocks[block] = (version, [ids[i] for i in order])

    def _discard(self, sid: str) -> None:
        self._samples.pop(sid, None)
        self._targets.pop(sid, None)

    def batch(self, ids: Sequence[str], group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded hidden states entering ``group`` and their (B, T) mask."""
        return collate([self._samples[sid][group] for sid in ids])

    def targets(self, ids: Sequence[str]) -> torch.Tensor:
        """Token labels (B, T) aligned with :meth:`batch`, -100 on padding."""
        return pad_targets([self._targets[sid] for sid in ids])


def collate(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[0] for r in rows)
    hidden = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        hidden[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return hidden, mask


def pad_targets(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    out = torch.full((len(rows), max(r.shape[0] for r in rows)), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


class OnTheFlyFeatures(_Blocks):
    """The uncached path, same interface: run the frozen layers for every batch.

    Kept as the reference the cache is checked against, and for data too large for memory.
    """

    def __init__(self, backbone: AdaptedBackbone, chunk_size: int = 64):
        super().__init__()
        self.backbone = backbone
        self._inputs: dict[str, object] = {}

    def ensure(self, block: Hashable, version: Hashable, ids: Sequence[str],
               inputs: Sequence) -> None:
        if self._current(block, version):
            return
        self._inputs.update(zip(ids, inputs, strict=True))
        self._blocks[block] = (version, list(ids))

    def _discard(self, sid: str) -> None:
        self._inputs.pop(sid, None)

    def batch(self, ids: Sequence[str], group: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.backbone.encode([self._inputs[sid] for sid in ids])
        # run the frozen layers only as far as this group needs
        return self.backbone.boundaries(encoded, top_group=group)[group], encoded["attention_mask"]

    def targets(self, ids: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode([self._inputs[sid] for sid in ids])["labels"]
