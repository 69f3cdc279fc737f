"""Train one stage: its layer groups (``Method.trained_groups``) and its own head copy, on the
union of the prefix's slices.

A stage's weights are a pure function of (config, seed, shard, prefix, the retained samples
of the prefix's slices, its ancestors' weights; with ``best_epoch``, the validation samples,
which are never deletable). Training a stage again on the same data
therefore reproduces it bit for bit, which is what makes exact forgetting checkable.

The recipe (``S3TConfig``): ``stage_steps`` fixes the optimiser steps from the prefix's own
data, ``lr_schedule``/``warmup_ratio`` shape the learning rate over those steps (``LambdaLR``),
and ``best_epoch`` keeps the weights of the pass that scores best on the validation samples
(never deletable), so none of them lets data outside the stage's lineage in.

Classifiers train on cross-entropy over the sample labels. Causal LMs (``backbone.task ==
"causal_lm"``) train on the family's next-token loss over each sample's response tokens (the
token labels the feature cache keeps); their integer sample labels are unused, and their
``val_score`` is minus the mean token loss (higher is better, as for accuracy).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from s3t.config import NO_VALIDATION, ConfigError
from s3t.models.adapted import AdaptedBackbone
from s3t.models.stage_weights import StageWeights
from s3t.plan.methods import Method
from s3t.train.features import FeatureCache, OnTheFlyFeatures
from s3t.train.scheduler import StageCancelled


class TrainingDivergedError(ConfigError):
    """A stage's loss or weights stopped being finite numbers: nothing of it is kept.

    A ``ConfigError`` on ``learning_rate``, the usual cause (front ends name its option).
    """

    def __init__(self, shard: int, prefix: Sequence[int], what: str, learning_rate: float) -> None:
        super().__init__("learning_rate", (
            f"training diverged in shard {shard}, stage {tuple(prefix)}: {what}; lower "
            f"learning_rate (now {learning_rate:g})"))


@dataclass
class StageResult:
    weights: StageWeights
    n_samples: int
    val_score: float | None
    seconds: float
    final_loss: float | None


def stage_seed(seed: int, shard: int, prefix: Sequence[int]) -> int:
    """Seed of a stage: depends on its place in the plan, never on the data."""
    text = f"{seed}/{shard}/{','.join(map(str, prefix))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def train_stage(
    backbone: AdaptedBackbone,
    features: FeatureCache | OnTheFlyFeatures,
    *,
    shard: int,
    prefix: Sequence[int],
    ancestors: Sequence[StageWeights],
    method: Method,
    sample_ids: Sequence[str],
    labels: Sequence[int],
    val: tuple[Sequence[str], Sequence[int]] | None = None,
    progress: Callable[[int], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StageResult:
    """Train the stage ``prefix`` of ``shard``; ``ancestors`` are the stages of ``prefix[:-1]``.

    ``should_stop`` is asked after every optimiser step; True raises ``StageCancelled`` (a
    deletion doomed the stage: the scheduler stops it rather than finish and discard it)."""
    config = backbone.config
    depth = len(prefix)
    if len(ancestors) != depth - 1:
        raise ValueError(f"stage of depth {depth} needs {depth - 1} ancestors, got {len(ancestors)}")
    started = time.perf_counter()
    seed = stage_seed(config.seed, shard, prefix)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator

    backbone.load_route(ancestors, method)
    trained = method.trained_groups(depth)
    active = method.active_groups(depth)
    backbone.reset_groups(method.fresh_groups(depth), generator)
    backbone.set_depth(active)
    params = backbone.trainable(trained)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                  weight_decay=config.weight_decay)

    order = sorted(range(len(sample_ids)), key=lambda i: sample_ids[i])
    ids = [sample_ids[i] for i in order]
    y_all = torch.tensor([labels[i] for i in order], dtype=torch.long)
    # The step count depends on the prefix's own retained samples only (S3TConfig.stage_steps)
    total_steps = config.stage_step_count(len(ids), depth)
    schedule = lr_schedule(optimizer, config.lr_schedule, total_steps, config.warmup_ratio)
    has_val = val is not None and len(val[0]) > 0
    if config.best_epoch and not has_val:
        raise ConfigError("best_epoch", NO_VALIDATION)
    causal_lm = backbone.task == "causal_lm"
    lm = backbone.lm_family if causal_lm else None
    last_loss = None
    best: tuple[float, StageWeights] | None = None  # best_epoch: (score, weights), earliest wins
    step = 0
    backbone.model.train()
    while step < total_steps:  # one pass (epoch) over the prefix's data per iteration
        perm = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(perm), config.batch_size):
            if step == total_steps:  # stage_steps 'equal': the last pass may end early
                break
            batch = perm[start:start + config.batch_size]
            hidden, mask = features.batch([ids[i] for i in batch], active)
            if lm is not None:
                loss = lm.loss(backbone.model, backbone.top_hidden(hidden, mask, from_group=active),
                               features.targets([ids[i] for i in batch]))
            else:
                logits = backbone.top(hidden, mask, from_group=active)
                loss = F.cross_entropy(logits, y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            step += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise TrainingDivergedError(shard, prefix, f"the loss is {last_loss}",
                                            config.learning_rate)
            if progress is not None:
                progress(len(batch))
            if should_stop is not None and should_stop():
                backbone.model.eval()
                for p in params:
                    p.requires_grad_(False)
                raise StageCancelled(f"stage {shard}:{list(prefix)} cancelled by a deletion")
        if config.best_epoch and val is not None:
            score = val_score(backbone, features, val, active, config.batch_size)
            if best is None or score > best[0]:
                best = score, StageWeights(adapter=backbone.adapter_state(trained),
                                           head=backbone.head_state())
            backbone.model.train()
    backbone.model.eval()
    if best is not None:  # put the kept pass's weights back: the model holds what is returned
        backbone.load_adapter_state(best[1].adapter)
        backbone.load_head_state(best[1].head)
    for p in params:
        p.requires_grad_(False)
    if not all(bool(torch.isfinite(p).all()) for p in params):  # e.g. after one huge step
        raise TrainingDivergedError(shard, prefix, "the trained weights are not finite",
                                    config.learning_rate)

    weights = StageWeights(adapter=backbone.adapter_state(trained), head=backbone.head_state())
    kept_score = best[0] if best is not None else None
    if best is None and val is not None and has_val:
        kept_score = val_score(backbone, features, val, active, config.batch_size)
    return StageResult(weights, len(ids), kept_score, time.perf_counter() - started, last_loss)


def lr_factor(schedule: str, step: int, total: int, warmup_ratio: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``, as a fraction of
    ``learning_rate``: a linear warm-up over the first floor(warmup_ratio x total) steps
    (reaching w/(w+1), never 0), then constant, linear or cosine decay that would reach 0 at
    step ``total`` (a pure function of its arguments: the same in every executor)."""
    warmup = math.floor(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def lr_schedule(optimizer: torch.optim.Optimizer, schedule: str, total: int,
                warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A ``LambdaLR`` following :func:`lr_factor`, or None for a constant rate without
    warm-up (the optimiser then keeps ``learning_rate`` as it is)."""
    if schedule == "constant" and math.floor(warmup_ratio * total) == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, total, warmup_ratio))


def val_score(backbone: AdaptedBackbone, features: FeatureCache | OnTheFlyFeatures,
              val: tuple[Sequence[str], Sequence[int]], active: int, batch_size: int) -> float:
    """The model's score on the validation samples as currently loaded (higher is better):
    accuracy for classifiers, minus the mean token loss for causal LMs."""
    if backbone.task == "causal_lm":
        return -token_loss(backbone, features, val[0], active, batch_size)
    return accuracy(backbone, features, val[0], val[1], active, batch_size)


@torch.no_grad()
def accuracy(backbone: AdaptedBackbone, features: FeatureCache | OnTheFlyFeatures, ids: Sequence[str],
             labels: Sequence[int], active: int, batch_size: int) -> float:
    """Accuracy of the model as currently loaded (``active`` groups on) on cached samples."""
    if active == 0:
        raise ValueError("a model with no active layer group has no trained head to score")
    backbone.model.eval()
    correct = 0
    for start in range(0, len(ids), batch_size):
        hidden, mask = features.batch(ids[start:start + batch_size], active)
        logits = backbone.top(hidden, mask, from_group=active)
        pred = logits.argmax(dim=-1)
        correct += int((pred == torch.tensor(labels[start:start + batch_size])).sum())
    return correct / len(ids)


@torch.no_grad()
def token_loss(backbone: AdaptedBackbone, features: FeatureCache | OnTheFlyFeatures,
               ids: Sequence[str], active: int, batch_size: int) -> float:
    """Mean next-token loss over the supervised tokens of cached samples (causal LMs)."""
    from s3t.models.decoder import supervised

    if active == 0:
        raise ValueError("a model with no active layer group has no trained head to score")
    backbone.model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        hidden, mask = features.batch(chunk, active)
        states, tokens = supervised(backbone.top_hidden(hidden, mask, from_group=active),
                                    features.targets(chunk))
        if tokens.numel():
            logits = backbone.family.head(backbone.model, states, None)
            total += float(F.cross_entropy(logits, tokens, reduction="sum"))
            count += tokens.numel()
    return total / max(count, 1)
