"""The Ray executor: train a run's missing stages as Ray tasks, on this machine or a cluster.

Each stage is one Ray task (as many CPUs as the run's ``torch_threads``, with as many torch
threads: the run's numeric environment, so its bits are the local executor's). Its arguments
are the stage's job (its cells' retained samples), what every task of the call shares (config,
backbone path and sha256, validation samples; put in Ray's object store once) and its ancestors' weights: the
result of an ancestor's task when it trains in this call, so Ray runs a shard's chain in order
and shards and sibling orderings in parallel, or the hash-checked bytes of an ancestor already
live. What a worker does with them is :mod:`s3t.train.ray_worker`; it never sees the run
directory.

This process stays the only writer of the run and the ledger: it checks each result's bytes,
then commits it through :class:`~s3t.train.scheduler.Scheduler` (the version check inside the
ledger's transaction) in completion order, never before its parent; a stage whose cells a
deletion changed, or whose ancestor was discarded, is discarded and its queued descendants
cancelled. Weights are bitwise the local executor's (same seeds, same per-cell features). A
worker that dies mid-stage is retried by Ray (``MAX_RETRIES``); a driver that dies leaves
committed stages live and nothing else, and ``retrain`` (either executor) completes the run.

``import ray`` happens only here and in the worker module, inside functions; the engine
imports this module only for ``executor='ray'``, so the rest of s3t never pays for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

from s3t.config import ConfigError
from s3t.models.stage_weights import StageWeights, WeightBank
from s3t.run.files import ADAPTER_FILE, HEAD_FILE
from s3t.train.ray_worker import RAY_FAULT_ENV, RunSpec, StopList, content_digest, run_stage
from s3t.train.scheduler import EVAL_BLOCK, Scheduler, StageJob

MAX_RETRIES = 3  # attempts Ray makes again when a worker process or node dies mid-stage
POLL_SECONDS = 0.5  # how often the driver looks for deletions while it waits for results
#: The stage tasks' environment: no hub; ``worker_env`` sets the run's thread count.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

#: (shared ref, job, ancestor refs, torch threads of the run) -> ref
Submit = Callable[[Any, StageJob, list[Any], int], Any]


_REMOTE: Any = None


def submit_task(shared: Any, job: StageJob, ancestors: list[Any], threads: int = 1) -> Any:
    """Submit ``job`` as one Ray task asking for ``threads`` CPUs, computing with that many
    torch threads (the default way stages reach the cluster)."""
    global _REMOTE
    import ray

    if _REMOTE is None:
        _REMOTE = ray.remote(run_stage)
    return _REMOTE.options(num_cpus=threads, max_retries=MAX_RETRIES, retry_exceptions=False,
                           runtime_env={"env_vars": worker_env(threads)},
                           name=f"s3t stage {job.key}").remote(shared, job, *ancestors)


def worker_env(threads: int) -> dict[str, str]:
    """The stage tasks' environment variables for ``threads`` torch threads."""
    return {**WORKER_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextmanager
def ray_connection(address: str | None) -> Iterator[dict[str, Any]]:
    """Use this process's Ray connection, else start a local instance (``address`` None) or
    join a cluster (``"auto"`` or the head's address); what this call started, it shuts down."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor", "executor 'ray' needs the ray package: pip install "
                          "'s3t[ray]' (or use executor 'local')") from None
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except ConnectionError as err:
            raise ConfigError("ray_address", f"cannot join the Ray cluster at {address!r} ({err}); "
                              "start its head node first, or leave ray_address unset for a "
                              "local Ray instance") from None
    try:
        yield {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
               "cpus": ray.cluster_resources().get("CPU", 0.0), "started_here": started}
    finally:
        if started:
            ray.shutdown()


def train_missing_ray(scheduler: Scheduler, bank: WeightBank, *, address: str | None = None,
                      progress: bool = True, submit: Submit | None = None) -> dict:
    """Train every stage of the plan missing on the current data on Ray; restore routes.

    Same contract and summary as :func:`s3t.train.local.train_missing`, plus ``stages``:
    per stage, the node and process that ran it and its timings (seconds from this call's
    start; across machines they carry clock skew). ``submit`` puts one stage on the cluster
    (default :func:`submit_task`; ``bench/distributed.py`` measures shard-affine actors).
    """
    with ray_connection(address) as cluster:
        summary = _Driver(scheduler, bank, submit or submit_task, progress).run()
    summary["cluster"] = cluster
    return summary


class _Driver:
    """Submits a call's stages, then verifies and commits results as they complete."""

    def __init__(self, scheduler: Scheduler, bank: WeightBank, submit: Submit, progress: bool):
        self.scheduler, self.bank, self.submit, self.progress = scheduler, bank, submit, progress
        self.pending: dict[Any, StageJob] = {}  # task ref -> its job, until settled
        self.refs: dict[str, Any] = {}  # stage key -> its task ref
        self.waiting: dict[str, list[tuple[StageJob, dict | None]]] = {}  # parent -> finished children
        self.settled: set[str] = set()  # stage keys committed or discarded in this call
        self.submitted: dict[str, float] = {}  # stage key -> seconds from the start
        self.stages: list[dict[str, Any]] = []
        self.held: dict[str, Any] = {}  # live ancestors' bytes, read (hash-checked), put once
        self.failed: set[str] = set()  # stage keys discarded in this call
        self.stops: Any = None  # the call's StopList actor (run)
        self.bar: Any = None
        self.start = time.time()

    def run(self) -> dict:
        import ray

        scheduler = self.scheduler
        run = scheduler.run
        self.stops = ray.remote(StopList).options(num_cpus=0).remote()
        self._submit(scheduler.plan())
        try:
            self._wait_all()
        finally:
            for ref in self.pending:  # an error or an interrupt: stop what is still queued
                ray.cancel(ref)
        scheduler.finish()
        trained = [s for s in self.stages if s["status"] == "live"]
        return {"executor": "ray", "stages_trained": len(trained),
                "stages_discarded": scheduler.discarded, "stages_cancelled": scheduler.cancelled,
                "replans": scheduler.replans,
                "stage_seconds": {s["key"]: s["train_seconds"] for s in trained},
                "stages_total": run.tree.count() * run.config.shards, "stages": self.stages}

    def _submit(self, jobs: list[StageJob]) -> None:
        """Submit the (re)plan's stages not yet submitted in this call, parents first; each
        builds on its ancestors' tasks in this call or on their live files."""
        import ray

        scheduler, run = self.scheduler, self.scheduler.run
        spec = self._spec(jobs)
        shared, threads = ray.put(spec), spec.env.torch_threads or 1
        live = run.live_stages()
        for job in jobs:
            if job.key in self.refs or scheduler.should_skip(job):
                continue
            ancestors = []
            for k in job.ancestors:
                if k in self.refs and k not in self.failed:
                    ancestors.append(self.refs[k])
                elif k in live:
                    if k not in self.held:
                        record = live[k]
                        self.held[k] = ray.put({"files": run.store.read(record.shard, k,
                                                                        record.files)})
                    ancestors.append(self.held[k])
                else:  # neither live nor trained in this call: nothing to build on
                    break
            else:
                ref = self.submit(shared, job, ancestors, threads)
                scheduler.started(job)  # queued on the cluster (progress events)
                self.refs[job.key], self.pending[ref] = ref, job
                self.submitted[job.key] = time.time() - self.start
                continue
            scheduler.discard(job)
        # what the job's phase and estimate follow: the stages not settled yet
        scheduler.queue = [j for j in jobs if j.key not in self.settled]

    def _spec(self, jobs: list[StageJob]) -> RunSpec:
        run = self.scheduler.run
        digests: dict[Hashable, str] = {c.cell: content_digest(c.ids, c.inputs)
                                        for job in jobs for c in job.blocks}
        block = self.scheduler.eval_block()
        if block is not None:
            digests[EVAL_BLOCK] = content_digest(block[0], block[2])
        return RunSpec(config=run.config.to_dict(), model=run.config.model,
                       model_sha256=run.info["model_sha256"], num_labels=len(run.label_names),
                       digests=digests, eval_block=block,
                       test_hook=os.environ.get(RAY_FAULT_ENV),
                       numeric=None if run.numeric.legacy else run.numeric.to_dict(),
                       stops=self.stops)

    def _wait_all(self) -> None:
        import ray
        from ray.exceptions import RayTaskError, TaskCancelledError

        self.bar = tqdm(total=len(self.pending), unit="stage", desc="training stages (ray)",
                        disable=not self.progress)
        try:
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=POLL_SECONDS)
                self._drop_changed()
                for ref in ready:
                    job = self.pending.get(ref)
                    if job is None:  # cancelled meanwhile
                        continue
                    try:
                        outcome: dict | None = ray.get(ref)
                    except TaskCancelledError:
                        outcome = None
                    except RayTaskError as err:  # the stage's own error: same as the local executor
                        cause = getattr(err, "cause", None)
                        raise (cause if isinstance(cause, Exception) else err) from None
                    if outcome is not None and outcome.get("cancelled"):
                        outcome = None
                    parent = job.parent
                    if parent in self.refs and parent not in self.settled:
                        self.pending.pop(ref)  # settled right after its parent
                        self.waiting.setdefault(parent, []).append((job, outcome))
                        continue
                    self._settle(job, outcome)
        finally:
            self.bar.close()

    def _drop_changed(self) -> None:
        """A deletion changed some cells: cancel the stages that would have trained on them,
        then re-plan and submit the stages on the new versions in this same call."""
        self.scheduler.note_versions()
        if not self.scheduler.changed:
            return
        for ref, job in list(self.pending.items()):
            if ref in self.pending and self.scheduler.stale(job):
                self.scheduler.cancel(job)
                self._cancel(ref, job, discard=False)
        for ref, job in list(self.pending.items()):  # built on a cancelled stage
            if ref in self.pending and self.scheduler.should_skip(job):
                self._cancel(ref, job, discard=False)
        self._submit(self.scheduler.replan())
        self.bar.total = len(self.settled) + len(self.pending)
        self.bar.refresh()

    def _cancel(self, ref: Any, job: StageJob, discard: bool = True) -> None:
        """Stop ``job`` and every pending descendant of it; each is discarded.

        The driver stops waiting for the task and puts its key on the call's StopList; the
        task stops itself at its next check (``ray_worker.StopList``: ``ray.cancel`` of a
        running task crashed the driver in Ray 2.60), and a descendant that receives a
        cancelled result returns at once."""
        if discard:
            self.scheduler.discard(job)
        self.pending.pop(ref, None)
        if self.stops is not None:
            self.stops.add.remote(job.key)
        self._record(job, None, "discarded")
        self._drop_descendants(job)

    def _drop_descendants(self, job: StageJob) -> None:
        """Cancel the pending descendants of a discarded stage; settle (discard) finished ones."""
        for child_ref, child in list(self.pending.items()):
            if job.key in child.ancestors and child_ref in self.pending:
                self._cancel(child_ref, child)
        for child, outcome in self.waiting.pop(job.key, []):
            self._settle(child, outcome)

    def _settle(self, job: StageJob, outcome: dict | None) -> None:
        """Commit a finished stage (or discard it), then its children that waited for it."""
        self.pending.pop(self.refs[job.key], None)
        self.scheduler.note_versions()
        skipped = self.scheduler.should_skip(job)
        accepted = False
        if outcome is not None and not skipped:
            files = verified_files(job, outcome)
            weights = StageWeights.from_files(files)  # the bytes must parse before they go live
            t0 = time.perf_counter()
            accepted = self.scheduler.commit(job, files, {
                "seed": self.scheduler.run.config.seed, "final_loss": outcome["final_loss"],
                "train_seconds": outcome["train_seconds"], "executor": "ray",
                "host": outcome["host"], "torch_threads": outcome["torch_threads"]},
                outcome["val_score"])
            outcome = dict(outcome, commit_seconds=time.perf_counter() - t0)
            if accepted:
                self.bank.put(job.key, weights)
        elif not skipped:  # cancelled
            self.scheduler.discard(job)
        self._record(job, outcome, "live" if accepted else "discarded")
        if not accepted:
            self._drop_descendants(job)
        for child, child_outcome in self.waiting.pop(job.key, []):
            self._settle(child, child_outcome)

    def _record(self, job: StageJob, outcome: dict | None, status: str) -> None:
        row: dict[str, Any] = {"key": job.key, "shard": job.shard, "depth": len(job.prefix),
                               "parent": job.parent, "status": status, "n_samples": job.n_samples,
                               "submitted": self.submitted.get(job.key),
                               "settled": time.time() - self.start}
        if outcome:
            row.update({k: outcome[k] for k in ("host", "node_id", "pid", "setup_seconds",
                                                 "train_seconds", "features_seconds")})
            row["started"] = outcome["started"] - self.start
            row["finished"] = outcome["finished"] - self.start
            row["bytes"] = sum(len(b) for b in outcome["files"].values())
            if "commit_seconds" in outcome:
                row["commit_seconds"] = outcome["commit_seconds"]
        self.stages.append(row)
        self.settled.add(job.key)
        if status != "live":
            self.failed.add(job.key)
        self.scheduler.queue = [j for j in self.scheduler.queue if j.key != job.key]
        if self.bar is not None:
            self.bar.update(1)


def verified_files(job: StageJob, outcome: dict[str, Any]) -> dict[str, bytes]:
    """A worker's weight files for ``job``, checked against the sha256 it computed."""
    files = outcome.get("files")
    if outcome.get("key") != job.key or not isinstance(files, dict) or \
            set(files) != {ADAPTER_FILE, HEAD_FILE}:
        raise RuntimeError(f"a Ray worker returned a malformed result for stage {job.key}")
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != outcome["sha256"][name]:
            raise RuntimeError(f"stage {job.key}: {name} was altered between the Ray worker and "
                               "this process (sha256 mismatch); retrain")
    return files
