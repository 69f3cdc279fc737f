"""Independent retrain-and-compare: re-derive a run's stages from its retained data and check
the stage files it holds, bit for bit.

A stage is a pure function of (config, seed, shard, prefix, the retained samples of its
cells and the run's anchor set, its ancestors' weights), so anyone holding the run can
rebuild it. This module does so from scratch, trusting nothing the run computed: a fresh
backbone (its sha256 checked against the run card), its own trunk features in a temporary
directory, and every ancestor of a checked stage retrained too (never read from the run).
Only then are the run's files read (hash-checked) and compared tensor by tensor.

It never writes the run directory (the run is opened without repair), so it can check a
run that a server is serving. What a hash check cannot see, this does: a stage file that
was swapped for one trained on a deleted sample, with the ledger's hashes updated to match,
has the right hashes but the wrong tensors.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from s3t.models.adapted import AdaptedBackbone, default_model_dir
from s3t.models.stage_weights import StageWeights
from s3t.run import FeatureFiles, IntegrityError, Run, StageRecord, lineage_chain, model_fingerprint
from s3t.run.files import META_FILE
from s3t.run.stages import served_stages
from s3t.train.features import FeatureCache, OnTheFlyFeatures
from s3t.train.numeric import check_env, numeric_env
from s3t.train.scheduler import (
    EVAL_BLOCK,
    CellData,
    Scheduler,
    StageJob,
    anchor_data,
    cell_data,
    total_work,
)
from s3t.train.stage_trainer import train_stage

SERVED, ALL = "served", "all"
IDENTICAL, DIFFERENT, DAMAGED, STALE = "identical", "different", "damaged", "stale"


class VerifySelectionError(ValueError):
    """What to verify cannot be verified (unknown or erased stage, nothing live)."""


@dataclass
class StageCheck:
    """The outcome for one stage: ``identical``, or why not (``different``: the first tensor
    that differs; ``damaged``: its files fail their hash check; ``stale``: it was trained on
    slice versions a deletion has since replaced, so it cannot be rebuilt from retained data)."""

    key: str
    shard: int
    depth: int
    status: str
    tensor: str | None = None
    max_abs_diff: float | None = None
    detail: str | None = None
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return self.status == IDENTICAL

    def describe(self) -> str:
        if self.status == IDENTICAL:
            return IDENTICAL
        if self.status == DIFFERENT and self.tensor is not None:
            diff = "" if self.max_abs_diff is None else f", max abs diff {self.max_abs_diff:.3g}"
            return f"DIFFERENT: first differing tensor {self.tensor}{diff}" + (
                f" ({self.detail})" if self.detail else "")
        return f"{self.status.upper()}: {self.detail}"


@dataclass
class VerifyReport:
    run_dir: str
    selection: str
    model_sha256: str
    stages: list[StageCheck] = field(default_factory=list)
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)  # the numeric environment rebuilt in

    @property
    def ok(self) -> bool:
        return bool(self.stages) and all(s.identical for s in self.stages)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "run_dir": self.run_dir, "selection": self.selection,
                "model_sha256": self.model_sha256, "seconds": self.seconds,
                "identical": sum(s.identical for s in self.stages),
                "environment": self.environment,
                "stages": [asdict(s) for s in self.stages]}


# --- what to verify ---------------------------------------------------------------------------

def select(records: dict[str, StageRecord], routes: dict[int, str | None],
           which: str | Sequence[str], serve_orderings: str = "best") -> list[StageRecord]:
    """The stages to check, each with its whole chain (ancestors are retrained, so they are
    compared too), ordered shard by shard and parents first.

    ``which``: ``"served"`` (the chains of every stage served, per ``serve_orderings``),
    ``"all"`` (every live stage) or stage keys.
    """
    if isinstance(which, str) and which not in (SERVED, ALL):
        raise VerifySelectionError(f"which must be {SERVED!r}, {ALL!r} or a list of stage keys, "
                                   f"got {which!r}")
    if which == SERVED:
        wanted = [k for keys in served_stages(routes, records, serve_orderings).values()
                  for k in keys]
        if not wanted:
            raise VerifySelectionError("no shard serves a stage (every shard lost its first "
                                       "slice): run `s3t retrain` first, or name stages")
    elif which == ALL:
        wanted = [k for k, r in records.items() if r.status == "live"]
        if not wanted:
            raise VerifySelectionError("the run has no live stage: run `s3t retrain` first")
    else:
        wanted = list(which)
        if not wanted:
            raise VerifySelectionError("no stage key given: pass --stages KEY[,KEY...] "
                                       "(see `s3t status`)")
        for key in wanted:
            if key not in records:
                raise VerifySelectionError(f"unknown stage {key!r}: this run has no such stage "
                                           "(see `s3t status` for the live ones)")
            if records[key].status != "live":
                raise VerifySelectionError(f"stage {key!r} is {records[key].status}: its files "
                                           "are gone, there is nothing to compare")
    chosen: dict[str, StageRecord] = {}
    for key in wanted:
        for link in lineage_chain(key, records):
            if link.status != "live":
                raise VerifySelectionError(f"stage {key!r} is built on {link.status} stage "
                                           f"{link.key!r}: it is not servable; run `s3t retrain`")
            chosen[link.key] = link
    return sorted(chosen.values(), key=lambda r: (r.shard, r.depth, r.key))


# --- verifying --------------------------------------------------------------------------------

def verify_run(path: str | Path, which: str | Sequence[str] = SERVED, progress: bool = True,
               workdir: str | Path | None = None) -> VerifyReport:
    """Retrain the selected stages (and their ancestors) from the run's retained samples in a
    fresh temporary directory and compare every tensor with the run's stage files.

    Raises :class:`VerifySelectionError` (a ``ValueError``) for a selection that cannot be
    verified and ``ValueError`` when the installed backbone is not the run's.
    """
    started = time.perf_counter()
    run = Run.open(path, repair=False)  # read-only use: no sweep, no scrub
    try:
        selection = which if isinstance(which, str) else ",".join(which)
        chosen, cells, anchor = _snapshot(run, which)
        check_env(run.numeric)  # refuse before any work when this process cannot match it
        backbone = _backbone(run)
        report = VerifyReport(str(run.path), selection, run.info["model_sha256"])
        tmp = Path(tempfile.mkdtemp(prefix="s3t-verify-", dir=workdir))
        try:
            with numeric_env(run.numeric) as report.environment:
                features = _features(run, backbone, tmp)
                try:
                    report.stages = _check(run, backbone, features, chosen, cells, anchor,
                                           progress)
                finally:
                    if isinstance(features, FeatureCache):
                        features.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        run.close()
    report.seconds = time.perf_counter() - started
    return report


def _snapshot(run: Run, which: str | Sequence[str]
              ) -> tuple[list[StageRecord], dict[tuple[int, int], CellData], CellData | None]:
    """One consistent read of the records the check needs: the selected stages, the
    retained samples of their cells and the anchor set (a deferred read transaction: no
    write lock, so deletions go on meanwhile)."""
    ledger = run.ledger
    ledger.conn.execute("BEGIN")
    try:
        chosen = select({r.key: r for r in ledger.stages(None)}, ledger.routes(), which,
                        run.config.serve_orderings)
        versions = ledger.slice_versions()
        needed = sorted({(r.shard, s) for r in chosen for s in r.prefix})
        cells = {}
        for cell in needed:
            cells[cell] = cell_data(cell, versions[cell], ledger.cell_samples(*cell))
        anchor = anchor_data(run)
    finally:
        ledger.conn.execute("COMMIT")
    return chosen, cells, anchor


def _backbone(run: Run) -> AdaptedBackbone:
    """A fresh backbone, refused unless its weight files hash to the run card's sha256."""
    model_dir = run.config.model or default_model_dir()
    found = model_fingerprint(model_dir)
    if found != run.info["model_sha256"]:
        raise ValueError(f"the backbone at {model_dir} (sha256 {found[:12]}...) differs from the "
                         f"one this run was trained with ({str(run.info['model_sha256'])[:12]}...):"
                         " install the same model")
    return AdaptedBackbone(run.config, num_labels=len(run.label_names), model_dir=model_dir)


def _features(run: Run, backbone: AdaptedBackbone, tmp: Path) -> FeatureCache | OnTheFlyFeatures:
    """Trunk features computed here, as the run's trainer computes them (same chunking and
    storage precision, which the values depend on), spilling only into ``tmp``."""
    config = run.config
    if not config.feature_cache:
        return OnTheFlyFeatures(backbone, chunk_size=config.batch_size)
    return FeatureCache(backbone, chunk_size=config.batch_size, dtype=config.feature_cache_dtype,
                        memory_bytes=int(config.feature_cache_memory_gb * 2**30),
                        files=FeatureFiles(tmp))


def _check(run: Run, backbone: AdaptedBackbone, features: FeatureCache | OnTheFlyFeatures,
           chosen: list[StageRecord], cells: dict[tuple[int, int], CellData],
           anchor: CellData | None, progress: bool) -> list[StageCheck]:
    """Train each chosen stage (parents first, on retrained ancestors) and compare it."""
    by_key = {r.key: r for r in chosen}
    jobs = {r.key: _job(r, by_key, cells, anchor) for r in chosen}
    work = total_work([j for j in jobs.values() if j is not None], run.config)
    bar = tqdm(total=work, unit="sample", desc="verifying stages", disable=not progress)
    val = None  # as in training: the validation samples score each stage (and, with
    block = Scheduler(run).eval_block()  # best_epoch, pick its kept epoch)
    if block is not None:
        features.ensure(EVAL_BLOCK, 0, block[0], block[2])
        val = block[0], block[1]
    rebuilt: dict[str, StageWeights] = {}
    checks: list[StageCheck] = []
    shard_cells: dict[int, set[tuple[int, int]]] = {}
    for record in chosen:
        shard_cells.setdefault(record.shard, set()).update((record.shard, s) for s in record.prefix)
    try:
        for n, record in enumerate(chosen):
            job = jobs[record.key]
            t0 = time.perf_counter()
            if job is None or (record.parent is not None and record.parent not in rebuilt):
                checks.append(_stale(record, cells))
                continue
            # A card without a numeric environment: each stage at the count it recorded.
            with torch_threads(recorded_threads(run, record) if run.numeric.legacy else None):
                for c in job.blocks:  # the anchor set (if any) and the prefix's cells
                    features.ensure(c.cell, c.version, list(c.ids), list(c.inputs))
                result = train_stage(
                    backbone, features, shard=record.shard, prefix=record.prefix,
                    ancestors=[rebuilt[k] for k in job.ancestors], method=run.method,
                    sample_ids=job.sample_ids, labels=job.labels, val=val, progress=bar.update)
            rebuilt[record.key] = result.weights
            check = _compare(run, record, result.weights)
            if check.identical and result.val_score != record.val_score:
                check = StageCheck(record.key, record.shard, record.depth, DIFFERENT, detail=(
                    f"its recorded validation score {record.val_score!r} is not the rebuilt "
                    f"stage's {result.val_score!r} (the 'validation' ensemble weighs by it)"))
            check.seconds = time.perf_counter() - t0
            checks.append(check)
            if n + 1 == len(chosen) or chosen[n + 1].shard != record.shard:
                for cell in shard_cells[record.shard]:  # this shard is done: free its features
                    features.drop(cell)
    finally:
        bar.close()
    return checks


def recorded_threads(run: Run, record: StageRecord) -> int | None:
    """The torch thread count the stage was trained with (its ``meta.json``), or None.

    Float reductions depend on it, so a rebuild with another count can differ in the last
    bits. Only a hint for reproduction: a wrong value makes the rebuild differ, never pass."""
    try:
        meta = json.loads((run.store.path(record.shard, record.key) / META_FILE).read_text())
        threads = meta.get("torch_threads")
    except (OSError, ValueError, AttributeError):
        return None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (unchanged for None), then restore the count."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _job(record: StageRecord, chosen: dict[str, StageRecord],
         cells: dict[tuple[int, int], CellData], anchor: CellData | None) -> StageJob | None:
    """The stage's training job on the retained data, or None if a deletion changed one of
    its cells after it was trained (its data is then gone: it cannot be rebuilt)."""
    data = tuple(cells[(record.shard, s)] for s in record.prefix)
    if any(c.version != v for c, v in zip(data, record.versions, strict=True)):
        return None
    ancestors = tuple(r.key for r in lineage_chain(record.key, chosen)[:-1])
    return StageJob(key=record.key, shard=record.shard, prefix=record.prefix,
                    versions=record.versions, parent=record.parent, ancestors=ancestors,
                    cells=data, anchor=anchor)


def _stale(record: StageRecord, cells: dict[tuple[int, int], CellData]) -> StageCheck:
    now = [cells[(record.shard, s)].version for s in record.prefix]
    return StageCheck(record.key, record.shard, record.depth, STALE, detail=(
        f"trained at slice versions {list(record.versions)} of slices {list(record.prefix)}, "
        f"which are now at {now}: it (or an ancestor) saw samples deleted since, and cannot "
        "be rebuilt from the retained data"))


def _compare(run: Run, record: StageRecord, rebuilt: StageWeights) -> StageCheck:
    """Read the run's files of the stage (hash-checked) and compare tensor by tensor."""
    def check(status: str, tensor: str | None = None, max_abs_diff: float | None = None,
              detail: str | None = None) -> StageCheck:
        return StageCheck(record.key, record.shard, record.depth, status, tensor, max_abs_diff,
                          detail)

    try:
        stored = StageWeights.from_files(run.store.read(record.shard, record.key, record.files))
    except IntegrityError as err:
        gone = not run.ledger.is_live(record.key)
        return check(DAMAGED, detail="erased by a deletion while it was being verified: verify "
                     "again" if gone else str(err))
    except (KeyError, ValueError, RuntimeError) as err:  # unreadable safetensors, missing file
        return check(DAMAGED, detail=f"its files cannot be read as stage weights: {err}")
    for part in ("adapter", "head"):
        mine, theirs = getattr(rebuilt, part), getattr(stored, part)
        for name in sorted(set(mine) | set(theirs)):
            tensor = f"{part}:{name}"
            if name not in theirs:
                return check(DIFFERENT, tensor=tensor, detail="missing from the run's files")
            if name not in mine:
                return check(DIFFERENT, tensor=tensor, detail="not a tensor this stage trains")
            a, b = mine[name], theirs[name]
            if a.dtype != b.dtype or a.shape != b.shape:
                return check(DIFFERENT, tensor=tensor, detail=(
                    f"run has {b.dtype} {tuple(b.shape)}, retrained {a.dtype} {tuple(a.shape)}"))
            if not _same_bits(a, b):
                return check(DIFFERENT, tensor=tensor, max_abs_diff=_max_abs_diff(a, b))
    return check(IDENTICAL)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (``-0.0`` differs from ``0.0``, a NaN equals the same NaN)."""
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8),
                       b.reshape(-1).contiguous().view(torch.uint8))


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a.double() - b.double()).abs()
    value = float(diff.max()) if diff.numel() else 0.0
    return value if math.isfinite(value) else float("inf")
