"""The run's history, derived from its ledger: capacity, live shards and deletions after
each stage commit and each deletion, in time order.

Derived rather than recorded, so every process that reads the run (two servers on one run,
a server restarted) reports the same history. A deletion's point takes the routes its
certificate records; a stage commit's point replays routing (``compute_routes``) over the
stages live at that moment: committed by then and not yet erased by a deletion. A stage
erased for another reason (a damaged file, quarantined by ``retrain``) left no time in the
ledger, so the replay never counts it. Nothing here reads a sample: only stage identities,
their commit times and the certificates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from s3t.run.certificate import Certificate
from s3t.run.stages import StageRecord, compute_routes


def unix_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time as the ledger writes it (UTC)."""
    return datetime.fromisoformat(text).timestamp()


def timeline(stages: Sequence[StageRecord], created: Mapping[str, str],
             certificates: Sequence[Certificate], n_shards: int, slices: int,
             servable: Callable[[int], bool] = lambda depth: True) -> list[dict]:
    """One point per stage commit and per deletion, oldest first: ``time`` (unix seconds),
    ``event`` (``stage-commit`` or ``deletion``), ``capacity``, ``live_shards``,
    ``deletion_requests`` and ``deleted`` (samples) so far."""
    records = {r.key: r for r in stages}
    erased_by = {key: c.request_id for c in certificates for key in c.erased_stages}
    events: list[tuple[float, int, str, object]] = []
    for record in stages:
        if record.key in created and (record.status == "live" or record.key in erased_by):
            events.append((unix_time(created[record.key]), 0, record.key, record))
    for number, certificate in enumerate(certificates):
        events.append((unix_time(certificate.time), 1, f"{number:012d}", certificate))
    events.sort(key=lambda e: e[:3])

    def point(at: float, event: str, routes: Mapping[Any, str | None]) -> dict:
        depths = [records[k].depth if k in records else 0 for k in routes.values() if k]
        return {"time": at, "event": event,
                "capacity": sum(depths) / n_shards / slices if n_shards and slices else 0.0,
                "live_shards": len(depths), "deletion_requests": requests, "deleted": deleted}

    live: dict[str, StageRecord] = {}
    requests = deleted = 0
    points = []
    for at, kind, key, item in events:
        if kind == 0:
            assert isinstance(item, StageRecord)
            live[key] = item
            points.append(point(at, "stage-commit", compute_routes(live.values(), n_shards,
                                                                   servable)))
        else:
            assert isinstance(item, Certificate)
            for erased in item.erased_stages:
                live.pop(erased, None)
            requests += 1
            deleted += len(item.samples)
            points.append(point(at, "deletion", item.routes_after))
    return points
