"""Ensemble weights: how much each live shard counts when the shards' outputs are combined
(``S3TConfig.ensemble``). Pure functions, no I/O, shared by serving and status.

A weight is computed from the records of the stages a shard serves and from nothing else:
their depth (how many slices the served stage was trained on) and their ``val_score``, the
score on the validation split, which is never deletable. Both are fixed when the stage is
trained and are bitwise those of the same stage trained from scratch on the retained data,
so no weight can depend on a deleted sample; a deletion changes weights only by changing
which stages serve (a demoted shard serves a shallower stage, with its own depth and score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from s3t.run.stages import StageRecord


def validation_weight(score: float, n_labels: int, n_val: int, task: str) -> float:
    """The weight of a served stage scoring ``score`` on ``n_val`` validation samples.

    Classifiers: the log-odds over chance of its accuracy, ``log((K-1) acc / (1 - acc))``
    for ``K`` labels (the weight under which a weighted vote of independent classifiers is
    most often right), 0 at or below chance; the accuracy is smoothed towards chance, to
    ``(acc n + 1) / (n + K)``, so that a perfect score gives a finite weight. Causal LMs
    (whose score is minus the mean token loss): ``exp(score)``, the geometric mean
    probability of a token.
    """
    if task == "causal_lm":
        return math.exp(score)
    k = max(n_labels, 2)
    acc = (score * n_val + 1.0) / (n_val + k)
    return max(0.0, math.log((k - 1) * acc / (1.0 - acc)))


def shard_weights(served: Mapping[int, Sequence[str]], records: Mapping[str, StageRecord],
                  ensemble: str, n_labels: int, n_val: int,
                  task: str = "classification") -> dict[int, float]:
    """Each serving shard's weight (``served``: shard -> the stages it serves, its route
    first, as ``served_stages`` gives). ``'mean'``: 1 each. ``'depth'``: the served depth.
    ``'validation'``: :func:`validation_weight` of the mean score of the shard's served
    stages. Weights are not normalised; where they are all 0, or a served stage has no score
    (a run without validation samples), every shard weighs 1."""
    equal = dict.fromkeys(served, 1.0)
    if ensemble == "mean" or not served:
        return equal
    if ensemble == "depth":
        return {m: float(records[keys[0]].depth) for m, keys in served.items()}
    if ensemble != "validation":
        raise ValueError(f"unknown ensemble {ensemble!r}")
    weights = {}
    for m, keys in served.items():
        row = [s for s in (records[k].val_score for k in keys) if s is not None]
        if len(row) < len(keys):
            return equal
        weights[m] = validation_weight(math.fsum(row) / len(row), n_labels, n_val, task)
    return weights if any(w > 0 for w in weights.values()) else equal
