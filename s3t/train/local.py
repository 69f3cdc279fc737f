"""The local executor: train a run's missing stages one after another in this process.

It drives the :class:`~s3t.train.scheduler.Scheduler` (what to train, what to skip, the
version-checked commit) with the frozen-trunk feature cache and :func:`train_stage`. It is
the reference every other executor must match bit for bit.
"""

from __future__ import annotations

from functools import partial

import torch
from tqdm.auto import tqdm

from s3t.models.adapted import AdaptedBackbone
from s3t.models.stage_weights import WeightBank
from s3t.train.features import FeatureCache, OnTheFlyFeatures
from s3t.train.scheduler import EVAL_BLOCK, Scheduler, StageCancelled, total_work
from s3t.train.stage_trainer import train_stage


def train_missing(scheduler: Scheduler, backbone: AdaptedBackbone,
                  features: FeatureCache | OnTheFlyFeatures, bank: WeightBank,
                  progress: bool = True) -> dict:
    """Train every stage of the plan that is missing on the current data; restore routes.

    A stage that went live is put in ``bank``; the summary lists trained and discarded stages.
    """
    run = scheduler.run
    config = run.config
    jobs = scheduler.plan()
    val = None
    block = scheduler.eval_block()
    if block is not None:
        features.ensure(EVAL_BLOCK, 0, block[0], block[2])
        val = block[0], block[1]
    stage_seconds: dict[str, float] = {}
    bar = tqdm(total=total_work(jobs, config), unit="sample", desc="training stages",
               disable=not progress)
    while (job := scheduler.next_job()) is not None:  # re-plans when a deletion landed
        cached = all(features.ensure(c.cell, c.version, list(c.ids), list(c.inputs))
                     for c in job.blocks)
        if not cached:  # a deletion hit a cell while it was being spilled
            features.drop_stale(scheduler.note_versions())
            scheduler.discard(job)
            continue
        live = run.live_stages()
        if any(k not in live for k in job.ancestors):  # a deletion erased an ancestor
            scheduler.discard(job)
            continue
        ancestors = [bank.get(live[k]) for k in job.ancestors]
        scheduler.started(job)
        try:
            result = train_stage(
                backbone, features, shard=job.shard, prefix=job.prefix, ancestors=ancestors,
                method=run.method, sample_ids=job.sample_ids, labels=job.labels, val=val,
                progress=bar.update, should_stop=partial(scheduler.doomed, job))
        except StageCancelled:  # a deletion changed its data: never finished, never written
            scheduler.cancel(job)
            features.drop_stale(scheduler.note_versions())
            continue
        # Float reductions depend on the thread count: recorded so a check can match it.
        meta = {"seed": config.seed, "final_loss": result.final_loss,
                "train_seconds": result.seconds, "executor": "local",
                "torch_threads": torch.get_num_threads()}
        accepted = scheduler.commit(job, result.weights.to_files(), meta, result.val_score)
        # Cells a deletion changed meanwhile: their cached features hold deleted inputs.
        features.drop_stale(scheduler.note_versions())
        if accepted:
            bank.put(job.key, result.weights)
            stage_seconds[job.key] = result.seconds
    bar.close()
    scheduler.finish()
    return {"stages_trained": len(stage_seconds), "stages_discarded": scheduler.discarded,
            "stages_cancelled": scheduler.cancelled, "replans": scheduler.replans,
            "stage_seconds": stage_seconds,
            "stages_total": run.tree.count() * config.shards}
