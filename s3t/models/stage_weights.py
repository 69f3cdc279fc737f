"""A stage's weights in memory: its layer groups' adapter tensors and its head copy, their
safetensors form, and the process's bank of stages already read.

The run package moves bytes only; this is where bytes become tensors, so the deletion
path never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from s3t.run.files import ADAPTER_FILE, HEAD_FILE, StageStore
from s3t.run.ledger import StageRecord

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StageWeights:
    """What a stage trains: its layer groups' adapter tensors and its head copy."""

    adapter: StateDict
    head: StateDict

    def to_files(self) -> dict[str, bytes]:
        """The stage's weight files as bytes, for :meth:`StageStore.write`."""
        return {ADAPTER_FILE: save_tensors({k: v.contiguous() for k, v in self.adapter.items()}),
                HEAD_FILE: save_tensors({k: v.contiguous() for k, v in self.head.items()})}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> StageWeights:
        return cls(adapter=load_tensors(files[ADAPTER_FILE]), head=load_tensors(files[HEAD_FILE]))


class WeightBank:
    """Stage weights this process holds, read from the stage store (hash-checked) on first use.

    Only live stages may enter; :meth:`keep_only` drops the rest when a deletion (here or in
    another process) erased them, so a bank never serves an erased stage's weights.
    """

    def __init__(self, store: StageStore):
        self.store = store
        self._held: dict[str, StageWeights] = {}

    def get(self, record: StageRecord) -> StageWeights:
        if record.status != "live":
            raise ValueError(f"stage {record.key} is {record.status}, not live: it cannot be used")
        if record.key not in self._held:
            files = self.store.read(record.shard, record.key, record.files)
            self._held[record.key] = StageWeights.from_files(files)
        return self._held[record.key]

    def put(self, key: str, weights: StageWeights) -> None:
        self._held[key] = weights

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._held.pop(key, None)

    def keep_only(self, live: Iterable[str]) -> None:
        self.drop(set(self._held) - set(live))

    def keys(self) -> list[str]:
        return sorted(self._held)
