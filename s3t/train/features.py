"""Cache of the frozen pretrained hidden states at every layer-group boundary.

The layers below a stage's trained group run with pure pretrained weights, so their
outputs are the same for every shard, ordering and stage: compute them once per sample.
Values are computed cell by cell (samples sorted by id, fixed chunks), so a sample's
features depend only on its cell's current contents; after a deletion the cell is
recomputed, and a retrained stage sees exactly what a from-scratch run would; only the chunks
that hold no deleted sample are kept (:meth:`FeatureCache.forget`) and reused where the new
chunking asks for exactly their members and inputs: a chunk's rows are a deterministic
function of those, whatever a row's dependence on its neighbours.
The cache holds nothing trained. It lives in memory up to a budget and spills further
blocks to memory-mapped files in the run directory, which deletions erase like stage files;
it can store float16 to halve its size (compute stays float32).

When the backbone's ``encode`` returns token ``labels`` (causal LMs), each sample's labels are
kept beside its states and :meth:`FeatureCache.targets` pads them with -100 like the states.
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from s3t.models.adapted import AdaptedBackbone
from s3t.run.files import FeatureFiles

_FLOAT16_MAX = float(np.finfo(np.float16).max)
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

    @property
    def versions(self) -> dict[Hashable, Hashable]:
        """The version each block is held at: a block whose version is not the ledger's
        current one holds samples' old contents (possibly a deleted sample) and is stale."""
        return {block: version for block, (version, _) in self._blocks.items()}

    def drop_stale(self, versions: dict) -> None:
        """Drop every block held at a version other than ``versions[block]``."""
        for block, (version, _) in list(self._blocks.items()):
            if block in versions and versions[block] != version:
                self.drop(block)

    def drop(self, block: Hashable) -> None:
        cached = self._blocks.pop(block, None)
        if cached is not None:
            for sid in cached[1]:
                self._discard(sid)

    def _discard(self, sid: str) -> None:
        raise NotImplementedError


@dataclass
class HeldBlock:
    """One block's features: every sample's tokens concatenated along the first axis."""

    spans: dict[str, tuple[int, int]]  # sample id -> (first token, tokens)
    states: dict[int, np.ndarray]  # layer group -> (tokens, hidden), in RAM or memory-mapped
    targets: np.ndarray | None  # token labels (causal LMs), aligned with the states
    path: Path | None  # where the block was spilled, None when it is in memory
    chunks: list[tuple[tuple[str, ...], tuple]]  # each chunk's members and their inputs

    def rows(self, sid: str) -> dict[str, np.ndarray]:
        """Copies of one sample's stored rows, by part name ("g<group>", "targets")."""
        first, n = self.spans[sid]
        out = {f"g{g}": np.array(a[first:first + n]) for g, a in self.states.items()}
        if self.targets is not None:
            out["targets"] = np.array(self.targets[first:first + n])
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.states.values())


class FeatureCache(_Blocks):
    """Features in memory up to ``memory_bytes``; blocks beyond that are written to this
    process's folder of ``files`` (see :class:`s3t.run.files.FeatureFiles`) and memory-mapped.
    ``dtype`` is the storage precision; compute is always float32.

    A spilled block holds sample inputs in derived form, so it is erased like a stage: the
    engine drops a hit cell's block, and ``forget`` in any process removes a hit cell's
    older folders. ``is_current(block, version)`` is asked right after a block is written:
    if a deletion changed the block meanwhile, the block is removed at once and
    :meth:`ensure` returns False.
    """

    def __init__(self, backbone: AdaptedBackbone, chunk_size: int = 64, dtype: str = "float32",
                 memory_bytes: int | None = None, files: FeatureFiles | None = None,
                 is_current: Callable[[Hashable, Hashable], bool] | None = None):
        super().__init__()
        self.backbone = backbone
        self.chunk_size = chunk_size
        self.dtype = np.dtype(dtype)
        self.memory_bytes = memory_bytes
        self.files = files
        self.is_current = is_current
        self.directory: Path | None = None  # this process's spill folder, made on first spill
        self._held: dict[Hashable, HeldBlock] = {}
        self._kept: dict[Hashable, dict[tuple[str, ...], tuple[tuple, dict]]] = {}  # forget
        self._where: dict[str, Hashable] = {}
        self._in_memory = 0
        self._finalizer: weakref.finalize | None = None

    def ensure(self, block: Hashable, version: Hashable, ids: Sequence[str],
               inputs: Sequence) -> bool:
        """Make sure the samples of ``block`` (a cell, or the eval set) are cached at
        ``version``; False if a deletion changed the block while it was being spilled."""
        kept = self._kept.pop(block, {})  # chunks a deletion left as they were (forget)
        if self._current(block, version):
            return True
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        parts: dict[str, list[np.ndarray]] = {}  # "g<group>" / "targets" -> rows, in memory
        spans: dict[str, tuple[int, int]] = {}
        chunks: list[tuple[tuple[str, ...], tuple]] = []
        position, nbytes, writer = 0, 0, None
        try:
            for start in range(0, len(order), self.chunk_size):
                chunk = order[start:start + self.chunk_size]
                members = tuple(ids[i] for i in chunk)
                sources = tuple(inputs[i] for i in chunk)
                chunks.append((members, sources))
                reused = kept.get(members)
                found = (reused[1] if reused is not None and _same(reused[0], sources)
                         else self._computed(members, sources))
                for sid in members:
                    for name, values in found[sid].items():
                        if name != "targets":
                            nbytes += values.nbytes
                        parts.setdefault(name, []).append(values)
                    n = next(iter(found[sid].values())).shape[0]
                    spans[sid] = (position, n)
                    position += n
                if writer is None and self._spill(nbytes):  # from here on, straight to disk
                    writer = _SpillWriter(self._spill_dir() / FeatureFiles.block_name(block, version))
                if writer is not None:
                    for name, rows in parts.items():
                        writer.add(name, rows)
                    parts.clear()
            arrays = (writer.finish() if writer is not None
                      else {name: np.concatenate(rows) for name, rows in parts.items()})
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        targets = arrays.pop("targets", None)
        held = HeldBlock(spans, {int(k[1:]): v for k, v in arrays.items()}, targets,
                     None if writer is None else writer.final, chunks)
        if writer is not None and self.is_current is not None and not self.is_current(block, version):
            shutil.rmtree(writer.final, ignore_errors=True)  # a deletion came in meanwhile
            return False
        if writer is None:
            self._in_memory += held.nbytes
        self._held[block] = held
        self._where.update(dict.fromkeys(spans, block))
        self._blocks[block] = (version, [ids[i] for i in order])
        return True

    @property
    def held(self) -> Mapping[Hashable, HeldBlock]:
        """The blocks held, read-only: where each lives (``path``: its spill folder, None in
        memory), its arrays (memory-mapped when spilled) and its size."""
        return MappingProxyType(self._held)

    @property
    def kept(self) -> Mapping[Hashable, list[tuple[str, ...]]]:
        """The members of the chunks kept for reuse after a deletion (:meth:`forget`), by block."""
        return MappingProxyType({block: sorted(k) for block, k in self._kept.items()})

    def __contains__(self, sid: object) -> bool:
        """Whether sample ``sid``'s features are held (a changed cell's dropped samples,
        deleted ones among them, never are)."""
        return sid in self._where

    def _computed(self, members: tuple[str, ...], sources: tuple) -> dict[str, dict[str, np.ndarray]]:
        """One chunk's rows through the frozen trunk: sample id -> part name -> stored rows."""
        batch = self.backbone.encode(list(sources))
        bounds = {g: h.float().numpy() for g, h in self.backbone.boundaries(batch).items()}
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        out: dict[str, dict[str, np.ndarray]] = {}
        for row, sid in enumerate(members):
            n = int(lengths[row])
            out[sid] = {f"g{g}": self._stored(h[row, :n]) for g, h in bounds.items()}
            if "labels" in batch:
                out[sid]["targets"] = batch["labels"][row, :n].numpy()
        return out

    def forget(self, block: Hashable, deleted: set[str]) -> None:
        """A deletion hit ``block``: drop it, keeping in memory copies of the rows of its
        chunks that hold no sample of ``deleted``, for :meth:`ensure` to reuse at the new
        version where the chunking asks for the same members. A spilled block is dropped
        whole (``forget`` erases its files)."""
        kept = {m: piece for m, piece in self._kept.pop(block, {}).items()
                if deleted.isdisjoint(m)}
        held = self._held.get(block)
        if held is not None and held.path is None:
            kept.update({members: (sources, {sid: held.rows(sid) for sid in members})
                         for members, sources in held.chunks if deleted.isdisjoint(members)})
        self.drop(block)
        if kept:
            self._kept[block] = kept

    def _stored(self, values: np.ndarray) -> np.ndarray:
        if self.dtype == np.float16 and values.size and np.abs(values).max() > _FLOAT16_MAX:
            raise ValueError(f"hidden states reach {np.abs(values).max():.3g}, beyond float16's "
                             f"range ({_FLOAT16_MAX:.0f}): use feature_cache_dtype='float32'")
        return values.astype(self.dtype)

    def _spill(self, nbytes: int) -> bool:
        return (self.files is not None and self.memory_bytes is not None
                and self._in_memory + nbytes > self.memory_bytes)

    def _spill_dir(self) -> Path:
        """This process's locked spill folder, claimed on first use."""
        if self.directory is None:
            if self.files is None:
                raise RuntimeError("this feature cache has no FeatureFiles to spill to")
            self.directory, lock = self.files.claim_owner_dir()
            # never leave spilled data behind, even without close()
            self._finalizer = weakref.finalize(self, _release, self.directory, lock)
        return self.directory

    def drop(self, block: Hashable) -> None:
        super().drop(block)
        self._kept.pop(block, None)
        held = self._held.pop(block, None)
        if held is None:
            return
        if held.path is None:
            self._in_memory -= held.nbytes
        else:
            shutil.rmtree(held.path, ignore_errors=True)

    def _discard(self, sid: str) -> None:
        self._where.pop(sid, None)

    def close(self) -> None:
        """Forget everything held and remove the spill folder."""
        self._kept.clear()
        for block in list(self._held):
            self.drop(block)
        if self._finalizer is not None:
            self._finalizer()

    def _rows(self, ids: Sequence[str], group: int | None) -> list[np.ndarray]:
        rows = []
        for sid in ids:
            held = self._held[self._where[sid]]
            first, n = held.spans[sid]
            source = held.targets if group is None else held.states[group]
            if source is None:
                raise ValueError(f"no token labels cached for sample {sid!r}: the backbone's "
                                 "encode returns no labels (only causal LMs have targets)")
            rows.append(source[first:first + n])
        return rows

    def batch(self, ids: Sequence[str], group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded hidden states entering ``group`` (float32) and their (B, T) mask."""
        rows = self._rows(ids, group)
        hidden = np.zeros((len(rows), max(r.shape[0] for r in rows), rows[0].shape[1]), np.float32)
        mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
        for i, r in enumerate(rows):
            hidden[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        return torch.from_numpy(hidden), mask

    def targets(self, ids: Sequence[str]) -> torch.Tensor:
        """Token labels (B, T) aligned with :meth:`batch`, -100 on padding."""
        return pad_targets([torch.from_numpy(np.array(r)) for r in self._rows(ids, None)])

    @property
    def bytes_in_memory(self) -> int:
        return self._in_memory


class _SpillWriter:
    """Streams a block's rows into raw files in ``<final>.tmp``, then renames the folder to
    ``final`` and maps the files back: RAM holds at most one chunk of a spilled block."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self._files: dict[str, Any] = {}
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}

    def add(self, name: str, rows: list[np.ndarray]) -> None:
        if name not in self._files:
            self._files[name] = open(self.tmp / f"{name}.bin", "wb")  # noqa: SIM115
            self._layout[name] = (rows[0].dtype, rows[0].shape[1:], 0)
        dtype, width, count = self._layout[name]
        for row in rows:
            self._files[name].write(np.ascontiguousarray(row).tobytes())
            count += row.shape[0]
        self._layout[name] = (dtype, width, count)

    def finish(self) -> dict[str, np.ndarray]:
        for f in self._files.values():
            f.close()
        os.replace(self.tmp, self.final)
        return {name: np.memmap(self.final / f"{name}.bin", dtype=dtype, mode="r",
                                shape=(count, *width))
                for name, (dtype, width, count) in self._layout.items()}

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.final, ignore_errors=True)


def _same(kept: tuple, sources: tuple) -> bool:
    """Whether a kept chunk's inputs are the ones asked for (text compared by value, any
    other input only when it is the very same object)."""
    return len(kept) == len(sources) and all(
        a is b or (isinstance(a, str) and isinstance(b, str) and a == b)
        for a, b in zip(kept, sources, strict=True))


def _release(directory: Path, lock: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.close(lock)


def pad_targets(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    out = torch.full((len(rows), max(r.shape[0] for r in rows)), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


class OnTheFlyFeatures(_Blocks):
    """The uncached path, same interface: run the frozen layers for every batch.

    Kept as the reference the cache is checked against, and for data too large for memory.
    The frozen layers run on at most ``chunk_size`` samples at a time (rows of the batch,
    padded together), which bounds the trunk's peak memory when a caller asks for a batch
    larger than that; a batch of at most ``chunk_size`` samples runs in one piece.
    """

    def __init__(self, backbone: AdaptedBackbone, chunk_size: int = 64):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.backbone = backbone
        self.chunk_size = chunk_size
        self._inputs: dict[str, object] = {}

    def ensure(self, block: Hashable, version: Hashable, ids: Sequence[str],
               inputs: Sequence) -> bool:
        if not self._current(block, version):
            self._inputs.update(zip(ids, inputs, strict=True))
            self._blocks[block] = (version, list(ids))
        return True

    def _discard(self, sid: str) -> None:
        self._inputs.pop(sid, None)

    def batch(self, ids: Sequence[str], group: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.backbone.encode([self._inputs[sid] for sid in ids])
        mask = encoded["attention_mask"]
        # run the frozen layers only as far as this group needs, chunk_size rows at a time
        if len(ids) <= self.chunk_size:
            return self.backbone.boundaries(encoded, top_group=group)[group], mask
        states = [
            self.backbone.boundaries({k: v[start:start + self.chunk_size] for k, v in encoded.items()},
                                     top_group=group)[group]
            for start in range(0, len(ids), self.chunk_size)
        ]
        return torch.cat(states), mask

    def targets(self, ids: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode([self._inputs[sid] for sid in ids])["labels"]
