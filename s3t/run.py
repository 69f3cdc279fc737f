"""A run directory without its model: the ledger, the stage store and the run card.

Forgetting, status and audit need nothing else, so they never load torch or the backbone:
`s3t forget` in a fresh process costs file and SQLite work only, whatever the model's size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from s3t.config import S3TConfig
from s3t.data.ledger import Ledger
from s3t.plan.methods import Method
from s3t.store import FeatureFiles, StageStore
from s3t.unlearn import AuditReport, ForgetPlan, audit, forget, sweep

RUN_FILE = "s3t.json"
FORMAT = 1


class NotARunError(FileNotFoundError):
    """The directory does not hold an s3t run."""


class NoLiveShardError(RuntimeError):
    """Every shard has lost its first slice: the model must be retrained before it can serve."""


@dataclass
class Run:
    path: Path
    info: dict
    config: S3TConfig
    ledger: Ledger
    store: StageStore

    @property
    def features(self) -> FeatureFiles:
        return FeatureFiles(self.path)

    @property
    def method(self) -> Method:
        return Method(self.config.method, self.config.slices)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, repair: bool = True) -> Run:
        """Open a run; ``repair`` finishes an interrupted forget (stage files the ledger no
        longer holds live are erased; ``audit`` opens without it, to see the disk as it is);
        ``verify`` checks every live stage file's sha256."""
        path = Path(path)
        run_file = path / RUN_FILE
        if not run_file.is_file() or not (path / Ledger.FILE).is_file():
            raise NotARunError(f"{path} is not an s3t run directory (no {RUN_FILE} and "
                               f"{Ledger.FILE}); create one with `s3t train --out {path}`")
        try:
            info = json.loads(run_file.read_text())
            config = S3TConfig.from_dict(info["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise NotARunError(f"{run_file} is damaged: {err}") from None
        run = cls(path, info, config, Ledger.open_existing(path / Ledger.FILE),
                  StageStore(path / "stages"))
        if repair:
            sweep(run.ledger, run.store, run.features)
            if run.ledger.get_meta("scrub_pending"):
                run.ledger.checkpoint()
        if verify:
            for record in run.ledger.stages("live"):
                run.store.verify(record.shard, record.key, record.files)
        return run

    def forget(self, sample_ids: Sequence[str] | None = None,
               groups: Sequence[str] | None = None) -> tuple[ForgetPlan, dict]:
        if isinstance(sample_ids, str):
            sample_ids = [sample_ids]
        if isinstance(groups, str):
            groups = [groups]
        return forget(self.ledger, self.store, sample_ids, groups, self.config.shards,
                      self.path / "certificates", servable=self.method.servable,
                      features=self.features)

    def audit(self) -> AuditReport:
        return audit(self.ledger, self.store, self.features)

    def status(self) -> dict:
        records = {r.key: r for r in self.ledger.stages(None)}
        routes = self.ledger.routes()
        total, deleted = self.ledger.counts()
        depths = [records[k].depth if k else 0 for k in routes.values()]
        config = self.config
        return {
            "run_dir": str(self.path),
            "shards": config.shards, "slices": config.slices,
            "budget": config.budget, "strategy": config.strategy, "method": config.method,
            "live_shards": sum(k is not None for k in routes.values()),
            "routes": {str(m): None if k is None else
                       {"stage": k, "depth": records[k].depth, "prefix": list(records[k].prefix)}
                       for m, k in routes.items()},
            "samples": total, "deleted": deleted,
            "live_stages": sum(r.status == "live" for r in records.values()),
            "erased_stages": sum(r.status == "erased" for r in records.values()),
            "capacity": sum(depths) / len(depths) / config.slices if depths else 0.0,
            "deletion_requests": self.ledger.deletion_count(),
        }

    def close(self) -> None:
        self.ledger.close()
