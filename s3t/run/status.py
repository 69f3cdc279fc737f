"""A run's status: live shards, routes, capacity and counts, as one record read from the
ledger (what `s3t status`, `S3T.status()` and the service's `/v1/status` start from)."""

from __future__ import annotations

from pathlib import Path

from s3t.config import S3TConfig, validation_use
from s3t.run.ledger import Ledger
from s3t.run.stages import served_stages
from s3t.run.weighting import shard_weights


def run_status(path: Path, config: S3TConfig, ledger: Ledger, n_labels: int = 0,
               task: str = "classification") -> dict:
    """The status record of the run at ``path`` (its config and ledger; ``n_labels`` and
    ``task`` for the shards' ``validation`` weights)."""
    records = {r.key: r for r in ledger.stages(None)}
    routes = ledger.routes()
    total, deleted = ledger.counts()
    depths = [records[k].depth if k else 0 for k in routes.values()]
    served = served_stages(routes, records, config.serve_orderings)
    weights = shard_weights(served, records, config.ensemble, n_labels, ledger.eval_count(), task)
    return {
        "run_dir": str(path),
        "shards": config.shards, "slices": config.slices,
        "budget": config.budget, "strategy": config.strategy, "method": config.method,
        "live_shards": sum(k is not None for k in routes.values()),
        "routes": {str(m): None if k is None else
                   {"stage": k, "depth": records[k].depth, "prefix": list(records[k].prefix),
                    "weight": weights[m],
                    **({"served_stages": served[m]} if config.serve_orderings == "all"
                       else {})}
                   for m, k in routes.items()},
        "serve_orderings": config.serve_orderings, "ensemble": config.ensemble,
        "samples": total, "deleted": deleted,
        "live_stages": sum(r.status == "live" for r in records.values()),
        "erased_stages": sum(r.status == "erased" for r in records.values()),
        "capacity": sum(depths) / len(depths) / config.slices if depths else 0.0,
        "deletion_requests": ledger.deletion_count(),
        "validation_samples": ledger.eval_count(),
        **({"anchor_samples": ledger.anchor_count()} if config.anchor else {}),
        "validation_use": validation_use(config),
    }
