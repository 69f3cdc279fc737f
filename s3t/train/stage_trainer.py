"""Train one stage: layer group ``p`` and its own head copy, on the union of the prefix's slices.

A stage's weights are a pure function of (config, seed, shard, prefix, the retained samples
of the prefix's slices, its ancestors' weights). Training a stage again on the same data
therefore reproduces it bit for bit, which is what makes exact forgetting checkable.

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

from s3t.config import ConfigError
from s3t.models.adapted import AdaptedBackbone
from s3t.models.stage_weights import StageWeights
from s3t.plan.methods import Method
from s3t.train.features import FeatureCache, OnTheFlyFeatures


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
) -> StageResult:
    """Train the stage ``prefix`` of ``shard``; ``ancestors`` are the stages of ``prefix[:-1]``."""
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
    if method.layerwise or depth == 1:  # SISA/full continue from the previous checkpoint
        backbone.reset_groups(trained, generator)
    backbone.set_depth(active)
    params = backbone.trainable(trained)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                  weight_decay=config.weight_decay)

    order = sorted(range(len(sample_ids)), key=lambda i: sample_ids[i])
    ids = [sample_ids[i] for i in order]
    y_all = torch.tensor([labels[i] for i in order], dtype=torch.long)
    causal_lm = backbone.task == "causal_lm"
    lm = backbone.lm_family if causal_lm else None
    last_loss = None
    backbone.model.train()
    for _ in range(config.epochs if ids else 0):
        perm = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(perm), config.batch_size):
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
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise TrainingDivergedError(shard, prefix, f"the loss is {last_loss}",
                                            config.learning_rate)
            if progress is not None:
                progress(len(batch))
    backbone.model.eval()
    for p in params:
        p.requires_grad_(False)
    if not all(bool(torch.isfinite(p).all()) for p in params):  # e.g. after one huge step
        raise TrainingDivergedError(shard, prefix, "the trained weights are not finite",
                                    config.learning_rate)

    weights = StageWeights(adapter=backbone.adapter_state(trained), head=backbone.head_state())
    val_score = None
    if val is not None and len(val[0]) > 0 and causal_lm:
        val_score = -token_loss(backbone, features, val[0], active, config.batch_size)
    elif val is not None and len(val[0]) > 0:
        val_score = accuracy(backbone, features, val[0], val[1], active, config.batch_size)
    return StageResult(weights, len(ids), val_score, time.perf_counter() - started, last_loss)


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
