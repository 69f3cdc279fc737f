"""What each shard of a trained run serves at each depth, scored on the run's validation
samples: the :class:`~s3t.plan.accuracy.DepthTable` from which ``s3t plan --run`` predicts
the accuracy a deletion stream leaves served.

For every shard and servable depth, the stages that would serve it there (its live stages of
that depth whose ancestors are live, in routing order; with ``serve_orderings='best'`` the
first alone) are materialised one shard at a time, as serving does, and run on the validation
texts. Each depth's ensemble weight is the one serving would give it (``run/weighting.py``).
Reads the run, writes nothing; the validation samples are never deletable, so nothing here
depends on a deleted sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from s3t.plan.accuracy import DepthTable
from s3t.run.stages import StageRecord, chain_live, routing_rank
from s3t.run.weighting import shard_weights
from s3t.serve.ensemble import Ensemble, length_chunks
from s3t.serve.served import ServedModel

BATCH = 64


def depth_table(served: ServedModel, progress: Callable[[int, int], object] | None = None,
                rows: Sequence[tuple[str, int, str]] | None = None) -> DepthTable:
    """Score every (shard, depth) of the run behind ``served`` on its validation samples (or
    on ``rows`` of (id, label index, input) held out from its training data);
    ``progress(done, shards)`` after each shard. Raises ``ValueError`` (saying why) for a run
    that has nothing to score against: a causal LM, or no validation samples."""
    run = served.run
    if run.task != "classification":
        raise ValueError("served accuracy is predicted for classifiers; this run is a causal "
                         "language model")
    rows = run.ledger.eval_samples() if rows is None else list(rows)
    if not rows:
        raise ValueError("this run has no validation samples to score its stages on (train "
                         "with --eval-fraction, or S3T.fit(data, eval_data))")
    config, method = run.config, run.method
    records = {r.key: r for r in run.ledger.stages(None)}
    live = {k: r for k, r in records.items() if r.status == "live"}
    texts = [r[2] for r in rows]
    n_labels = len(run.label_names)
    ensemble = Ensemble(served.backbone, method)
    lengths = ensemble.token_lengths(texts)
    chunks = length_chunks(lengths, BATCH) if lengths is not None else \
        [list(range(i, min(i + BATCH, len(texts)))) for i in range(0, len(texts), BATCH)]
    members: dict[tuple[int, int], list[np.ndarray]] = {}
    weights: dict[tuple[int, int], float] = {}
    sisa: dict[int, np.ndarray] = {}
    sisa_order = tuple(range(config.slices))  # SISA's one ordering
    for shard in range(config.shards):
        every = _groups(shard, live, config.slices, method.servable)
        groups = every if config.serve_orderings == "all" else \
            {d: keys[:1] for d, keys in every.items()}
        found = shard_weights(groups, records, config.ensemble, n_labels, len(rows), run.task)
        identity = [k for k in every.get(config.slices, []) if records[k].prefix == sisa_order]
        stages = [key for keys in groups.values() for key in keys]
        stages += [k for k in identity if k not in stages]
        ensemble.update({i: (key, served.chain(key, records)) for i, key in enumerate(stages)})
        out = np.zeros((len(stages), len(texts), n_labels))
        for chunk in chunks:
            probs = ensemble.route_proba([texts[i] for i in chunk])
            for i in range(len(stages)):
                out[i, chunk] = probs[i]
        for depth, keys in groups.items():
            weights[(shard, depth)] = found[depth]
            members[(shard, depth)] = [out[stages.index(key)] for key in keys]
        if identity:
            sisa[shard] = out[stages.index(identity[0])]
        ensemble.update({})
        if progress is not None:
            progress(shard + 1, config.shards)
    return DepthTable(n_slices=config.slices, labels=np.array([r[1] for r in rows]),
                      members=members, weights=weights, n_shards=config.shards,
                      vote=config.aggregation == "vote", sisa=sisa)


def _groups(shard: int, live: dict[str, StageRecord], n_slices: int,
            servable: Callable[[int], bool]) -> dict[int, list[str]]:
    """Depth -> the shard's live stages of that depth whose ancestors are live, in routing
    order (``run/stages.py``): the first is the route the shard would serve there, the
    others its peers under ``serve_orderings='all'``."""
    out: dict[int, list[str]] = {}
    for record in sorted(live.values(), key=routing_rank):
        if record.shard == shard and servable(record.depth) and chain_live(record, live):
            out.setdefault(record.depth, []).append(record.key)
    return {d: out[d] for d in range(1, n_slices + 1) if d in out}

