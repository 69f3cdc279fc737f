"""A run's status: live shards, routes, capacity and counts, as one record read from the
ledger (what `s3t status`, `S3T.status()` and the service's `/v1/status` start from)."""

from __future__ import annotations

from pathlib import Path

from s3t.config import S3TConfig, validation_use
from s3t.run.ledger import Ledger
from s3t.run.stages import served_stages


def run_status(path: Path, config: S3TConfig, ledger: Ledger) -> dict:
    """The status record of the run at ``path`` (its config and ledger)."""
    records = {r.key: r for r in ledger.stages(None)}
    routes = ledger.routes()
    total, deleted = ledger.counts()
    depths = [records[k].depth if k else 0 for k in routes.values()]
    served = served_stages(routes, records, config.serve_orderings)
    return {
        "run_dir": str(path),
        "shards": config.shards, "slices": config.slices,
        "budget": config.budget, "strategy": config.strategy, "method": config.method,
        "live_shards": sum(k is not None for k in routes.values()),
        "routes": {str(m): None if k is None else
                   {"stage": k, "depth": records[k].depth, "prefix": list(records[k].prefix),
                    **({"served_stages": served[m]} if config.serve_orderings == "all"
                       else {})}
                   for m, k in routes.items()},
        "serve_orderings": config.serve_orderings,
        "samples": total, "deleted": deleted,
        "live_stages": sum(r.status == "live" for r in records.values()),
        "erased_stages": sum(r.status == "erased" for r in records.values()),
        "capacity": sum(depths) / len(depths) / config.slices if depths else 0.0,
        "deletion_requests": ledger.deletion_count(),
        "validation_samples": ledger.eval_count(),
        "validation_use": validation_use(config),
    }
