"""Which stages a run is missing, in which order, and the one place a trained stage is committed.

The scheduler is torch-free bookkeeping over the run's records, so any executor can drive
it: the local loop in ``train/local.py``, a service's background retrainer, a Ray driver.
It reads one consistent snapshot of the ledger (slice versions, live stages, cell contents),
lists the missing stages parents first, most useful first (:func:`prioritise`), and tells the
executor which to skip: a stage is never trained when a deletion changed one of its cells
since the snapshot, or when an ancestor was discarded. Committing re-checks the versions
inside the ledger's write transaction, so a stage that saw a deleted sample never goes live,
whatever the executor; the same transaction re-routes the shards, so a finished stage
serves the moment it is committed (a service picks it up at its next model call).
Executors report progress through ``on_event`` (one dict per event: ``plan``,
``stage-start``, ``stage-commit``, ``stage-discard``, ``done``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from s3t.config import S3TConfig
from s3t.run.directory import Run
from s3t.run.faults import fault_point
from s3t.run.files import IntegrityError
from s3t.run.forget import now
from s3t.run.ledger import StageRecord

Cell = tuple[int, int]
EVAL_BLOCK = "eval"
ANCHOR_BLOCK = "anchor"  # the anchor set's feature block and CellData (S3TConfig.anchor)
POLL_SECONDS = 0.2  # how often a training stage re-reads the slice versions (one SQLite read)


@dataclass(frozen=True)
class CellData:
    """A cell's retained samples at one version, sorted by id (or the anchor set, ``cell``
    ``ANCHOR_BLOCK`` at version 0: it never changes)."""

    cell: Cell | str
    version: int
    ids: tuple[str, ...]
    labels: tuple[int, ...]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class StageJob:
    """One stage to train: its identity, its ancestors and the data of its prefix's cells
    (with the run's anchor set, if any, which every stage trains on)."""

    key: str
    shard: int
    prefix: tuple[int, ...]
    versions: tuple[int, ...]
    parent: str | None
    ancestors: tuple[str, ...]          # keys of the stages of prefix[:1], ..., prefix[:-1]
    cells: tuple[CellData, ...]
    anchor: CellData | None = None      # the run's anchor set, part of its first slice

    @property
    def blocks(self) -> tuple[CellData, ...]:
        """What the stage trains on: the anchor set (if any), then its prefix's cells."""
        return self.cells if self.anchor is None else (self.anchor, *self.cells)

    @property
    def sample_ids(self) -> list[str]:
        return [sid for c in self.blocks for sid in c.ids]

    @property
    def labels(self) -> list[int]:
        return [y for c in self.blocks for y in c.labels]

    @property
    def n_samples(self) -> int:
        return sum(len(c.ids) for c in self.blocks)

    @property
    def depth(self) -> int:
        return len(self.prefix)

    def describe(self) -> dict:
        return {"key": self.key, "shard": self.shard, "prefix": list(self.prefix)}


def prioritise(jobs: Sequence[StageJob], live_depth: dict[tuple[int, tuple[int, ...]], bool],
               leaves: Sequence[tuple[int, ...]], n_slices: int,
               servable: Callable[[int], bool]) -> list[StageJob]:
    """Order missing stages so that what restores served quality comes first, parents first.

    Per shard, the *primary chain* is the full-depth ordering with the longest live prefix
    (ties: plan order); its missing stages restore the shard's route, the others only add
    fallback orderings for later deletions, so they come last. Primary stages are ordered by
    the depth of the next servable stage they lead to, then by depth: with layer-wise
    routes (S3T, every depth serves) that raises the shallowest shards first, round-robin
    by depth; when only full depth serves (SISA) it finishes one shard's chain at a time.
    ``live_depth[(shard, prefix)]`` says whether that stage is live now.
    """
    primary = primary_chains(jobs, live_depth, leaves)

    def next_servable(depth: int) -> int:
        return next((d for d in range(depth, n_slices + 1) if servable(d)), n_slices)

    def rank(job: StageJob) -> tuple[int, int, int, int]:
        on_primary = primary[job.shard][:job.depth] == job.prefix
        if on_primary:
            return (0, next_servable(job.depth), job.shard, job.depth)
        return (1, job.depth, job.shard, 0)

    return sorted(jobs, key=rank)  # stable: plan order within equal ranks


def primary_chains(jobs: Sequence[StageJob], live_depth: dict[tuple[int, tuple[int, ...]], bool],
                   leaves: Sequence[tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    """Per shard of ``jobs``, the full-depth ordering with the longest live prefix (ties:
    plan order): the chain whose missing stages restore the shard's serving depth."""
    def live_prefix(shard: int, leaf: tuple[int, ...]) -> int:
        k = 0
        while k < len(leaf) and live_depth.get((shard, leaf[:k + 1]), False):
            k += 1
        return k

    primary: dict[int, tuple[int, ...]] = {}
    for shard in sorted({job.shard for job in jobs}):
        best = max(range(len(leaves)), key=lambda i: (live_prefix(shard, leaves[i]), -i))
        primary[shard] = leaves[best]
    return primary


class StageCancelled(Exception):
    """A deletion changed the data of the stage being trained: it stops at once (its
    result could never go live)."""


@dataclass
class Scheduler:
    """Plans and commits the missing stages of one run (see the module docstring)."""

    run: Run
    on_event: Callable[[dict], object] | None = None
    jobs: list[StageJob] = field(default_factory=list)
    versions: dict[Cell, int] = field(default_factory=dict)   # at the last (re)plan
    current: dict[Cell, int] = field(default_factory=dict)    # as last read
    changed: set[Cell] = field(default_factory=set)      # cells a deletion hit since the plan
    discarded: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)   # stopped mid-training by a deletion
    committed: list[str] = field(default_factory=list)
    primary: set[str] = field(default_factory=set)       # keys on the shards' primary chains
    queue: list[StageJob] = field(default_factory=list)  # planned, not yet handed out
    replans: int = 0
    running: StageJob | None = None  # handed to the executor by ``started``
    _measured: list[tuple[int, float]] = field(default_factory=list)  # (sample visits, s)
    _polled: float = 0.0
    _dead: set[str] = field(default_factory=set)  # discarded since the last plan

    def next_job(self) -> StageJob | None:
        """The next stage to train, in priority order; re-plans first when a deletion landed
        since the plan (the stages on the new versions join this job, the doomed ones are
        dropped). None when nothing is left."""
        self.note_versions()
        if self.changed:
            self.replan()
        while self.queue:
            job = self.queue.pop(0)
            if not self.should_skip(job):
                return job
        return None

    def replan(self) -> list[StageJob]:
        """Plan again from a fresh snapshot: what is missing on the current versions, in
        priority order (stages handed out earlier and still running keep their keys)."""
        queued = [j.key for j in self.queue]
        self.replans += 1
        self.plan(event="replan", dropped=queued)
        return self.jobs

    def doomed(self, job: StageJob) -> bool:
        """Whether a deletion changed ``job``'s cells (the ledger is read at most every
        ``POLL_SECONDS``): the executor then cancels it (``StageCancelled``)."""
        if time.monotonic() - self._polled >= POLL_SECONDS:
            self.note_versions()
        return self.stale(job)

    def cancel(self, job: StageJob) -> None:
        """``job`` was stopped mid-training because a deletion changed its data."""
        self._settled(job)
        self.cancelled.append(job.key)
        self.discarded.append(job.key)
        self._dead.add(job.key)
        self._emit("stage-cancel", **job.describe())

    def _settled(self, job: StageJob) -> None:
        if self.running is not None and self.running.key == job.key:
            self.running = None

    def stale(self, job: StageJob) -> bool:
        return any(self.current.get((job.shard, s), v) != v
                   for s, v in zip(job.prefix, job.versions, strict=True))

    def phase(self) -> str:
        """``restoring`` while a primary-chain stage (one that restores serving depth) waits,
        then ``fallback`` (orderings only later deletions need)."""
        waiting = self.queue if self.running is None else [self.running, *self.queue]
        return "restoring" if any(j.key in self.primary for j in waiting) else "fallback"

    def eta_full_capacity(self) -> float | None:
        """Seconds until every shard serves at full depth, from this job's measured stage
        times (seconds per sample visit) and the primary stages still queued; None before
        the first measurement."""
        if not self._measured:
            return None
        visits, seconds = map(sum, zip(*self._measured, strict=True))
        waiting = self.queue if self.running is None else [self.running, *self.queue]
        left = sum(self.run.config.stage_sample_visits(j.n_samples, j.depth)
                   for j in waiting if j.key in self.primary)
        return round(seconds / max(visits, 1) * left, 3)

    def plan(self, event: str = "plan", dropped: Sequence[str] = ()) -> list[StageJob]:
        """Snapshot the ledger and list every missing stage of the plan, parents first."""
        run, ledger = self.run, self.run.ledger
        run.signer()  # a signed run's writer without its key stops here, before any training
        with ledger.transaction():  # one consistent snapshot of versions and contents
            self.versions = ledger.slice_versions()
            live_records = ledger.stages("live")
            rows = {cell: ledger.cell_samples(*cell) for cell in self.versions}
            anchor = anchor_data(run)
        cells = {cell: cell_data(cell, self.versions[cell], rs) for cell, rs in rows.items()}
        live = {r.key for r in live_records}
        jobs = []
        for shard in range(run.config.shards):
            for node in run.tree.stages:
                key = run.stage_key(shard, node.prefix, self.versions)
                if key in live:
                    continue
                keys = [run.stage_key(shard, node.prefix[:k], self.versions)
                        for k in range(1, node.depth)]
                jobs.append(StageJob(
                    key=key, shard=shard, prefix=node.prefix,
                    versions=tuple(self.versions[(shard, s)] for s in node.prefix),
                    parent=keys[-1] if keys else None, ancestors=tuple(keys),
                    cells=tuple(cells[(shard, s)] for s in node.prefix), anchor=anchor))
        live_at = {(r.shard, r.prefix): True for r in live_records}
        leaves = [node.prefix for node in run.tree.stages if node.depth == run.tree.n_slices]
        self.jobs = prioritise(jobs, live_at, leaves, run.tree.n_slices, run.method.servable)
        chains = primary_chains(jobs, live_at, leaves)
        self.primary = {j.key for j in self.jobs if chains[j.shard][:j.depth] == j.prefix}
        self.queue, self.current, self.changed = list(self.jobs), dict(self.versions), set()
        self._dead = set()
        kept = {j.key for j in self.jobs}
        self._emit(event, stages=len(self.jobs), stages_total=self.stages_total,
                   dropped=[k for k in dropped if k not in kept],  # planned, never started
                   order=[job.key for job in self.jobs],
                   primary=[job.key for job in self.jobs if job.key in self.primary])
        return self.jobs

    @property
    def stages_total(self) -> int:
        return self.run.tree.count() * self.run.config.shards

    def _emit(self, event: str, **fields: object) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, "time": now(), "phase": self.phase(),
                           "eta_full_capacity_s": self.eta_full_capacity(), **fields})

    def started(self, job: StageJob) -> None:
        """An executor began training ``job`` (for progress reports)."""
        self.running = job
        self._emit("stage-start", **job.describe())

    def should_skip(self, job: StageJob) -> bool:
        """Whether ``job`` would see deleted data or build on a stage that did."""
        if self.stale(job) or any(k in self._dead for k in job.ancestors):
            self.discard(job)
            return True
        return False

    def discard(self, job: StageJob) -> None:
        self._settled(job)
        self.discarded.append(job.key)
        self._dead.add(job.key)
        self._emit("stage-discard", **job.describe())

    def note_versions(self) -> dict[Cell, int]:
        """Re-read the slice versions; remember the cells a deletion changed since the plan."""
        current = self.run.ledger.slice_versions()
        self._polled = time.monotonic()
        self.changed.update(c for c, v in self.versions.items() if current[c] != v)
        self.current = dict(current)
        return current

    def commit(self, job: StageJob, files: dict[str, bytes], meta: dict,
               val_score: float | None) -> bool:
        """Write a trained stage's files and put it live if its data did not change while it
        trained; otherwise erase the files. Returns whether it went live."""
        run = self.run
        meta = {"key": job.key, "shard": job.shard, "prefix": list(job.prefix),
                "versions": list(job.versions), "parent": job.parent,
                "n_samples": job.n_samples, "val_score": val_score, **meta}
        hashes = run.store.write(job.shard, job.key, files, meta)
        fault_point("train:after-stage-write")
        record = StageRecord(job.key, job.shard, job.prefix, job.versions, job.parent, "live",
                             hashes, job.n_samples, val_score)
        routes: dict[int, str | None] = {}
        with run.ledger.transaction():
            try:  # never live without its files (a sweep or an operator may have removed them)
                run.store.verify(job.shard, job.key, hashes)
            except IntegrityError:
                accepted = False
            else:
                accepted = run.ledger.commit_stage(record, now())
            if accepted:  # serves from now on if it is its shard's best route
                run.sign_stage(record)  # with the run's key, if it has one
                before = run.ledger.routes()
                routes = run.ledger.refresh_routes(run.config.shards, run.method.servable)
        fault_point("train:after-stage-commit")
        if not accepted:
            run.store.erase(job.shard, job.key)
            self.discard(job)
            return False
        self.committed.append(job.key)
        self._settled(job)
        seconds = meta.get("train_seconds")
        if isinstance(seconds, (int, float)):
            self._measured.append((self.run.config.stage_sample_visits(job.n_samples, job.depth),
                                   float(seconds)))
        self._emit("stage-commit", **job.describe(), seconds=seconds,
                   route_switched=routes != before,
                   routes={str(m): k for m, k in routes.items()})
        return True

    def finish(self) -> dict[int, str | None]:
        """Route every shard to its best live stage."""
        fault_point("train:before-routes")
        with self.run.ledger.transaction():
            routes = self.run.ledger.refresh_routes(self.run.config.shards,
                                                    self.run.method.servable)
        self._emit("done", discarded=list(self.discarded), cancelled=list(self.cancelled),
                   replans=self.replans)
        return routes

    def eval_block(self) -> tuple[list[str], list[int], list[str]] | None:
        """The validation samples (never deletable): ids, labels, inputs."""
        rows = self.run.ledger.eval_samples()
        if not rows:
            return None
        return [f"eval:{r[0]}" for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def cell_data(cell: Cell | str, version: int, rows: Sequence[tuple[str, int, str]]) -> CellData:
    """A block's CellData from ledger rows of (id, label, input), sorted by id."""
    return CellData(cell, version, tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                    tuple(r[2] for r in rows))


def anchor_data(run: Run) -> CellData | None:
    """The run's anchor set (``S3TConfig.anchor``), which every stage trains on with its
    prefix's cells: fixed at training, always in the same block, sorted by id, so every
    executor and ``s3t verify`` rebuild it bitwise; None without anchor."""
    if not run.config.anchor:
        return None
    return cell_data(ANCHOR_BLOCK, 0, run.ledger.anchor_samples())


def total_work(jobs: Sequence[StageJob], config: S3TConfig) -> int:
    """Samples the jobs' optimiser steps read in all (for progress bars)."""
    return sum(config.stage_sample_visits(job.n_samples, job.depth) for job in jobs)
