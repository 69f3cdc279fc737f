"""A retrain that re-plans: a deletion during a local retrain cancels the stage it dooms and
the same job trains the stages on the new versions; primary chains first (shallowest shard
first), fallback orderings last; progress events carry the phase and an estimated time to
full capacity. What is served afterwards is bitwise what scratch training gives."""

from __future__ import annotations

import json

import pytest
from test_exactness import assert_served_equal_scratch, config
from tiny import toy_dataset

from s3t.contract import Job, JobEvent
from s3t.engine import S3T
from s3t.run import Run
from s3t.service.retrainer import follow
from s3t.train import scheduler
from s3t.train.scheduler import Scheduler


def retained(est: S3T, shard: int, slice_: int) -> str:
    return est.ledger.cell_samples(shard, slice_)[0][0]


@pytest.fixture
def fitted(tiny_bert, tmp_path):
    data = toy_dataset(72)
    cfg = config(tiny_bert)
    return S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False), data, cfg


def test_a_deletion_during_a_local_retrain_cancels_the_doomed_stage_and_replans(
        fitted, monkeypatch):
    est, data, cfg = fitted
    first = retained(est, 0, 0)
    est.forget([first])  # shard 0 loses the orderings through slice 0
    target = Scheduler(est.run).plan()[0]  # the job's first stage
    victim = retained(est, target.shard, target.prefix[-1])
    monkeypatch.setattr(scheduler, "POLL_SECONDS", 0.0)  # read the ledger at every step
    events: list[dict] = []

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] == "stage-start" and event["key"] == target.key:
            other = Run.open(est.run_dir)  # another process's deletion, while it trains
            other.forget([victim])
            other.close()

    summary = est.retrain(progress=False, on_event=on_event)
    assert summary["stages_cancelled"] == [target.key]  # stopped, never finished
    assert summary["replans"] == 1
    assert not est.store.path(target.shard, target.key).exists()
    assert not est.ledger.is_live(target.key)
    kinds = [e["event"] for e in events]
    assert kinds.index("stage-cancel") < kinds.index("replan")
    assert sum(1 for k in kinds if k == "stage-commit") == summary["stages_trained"]
    # the same job trained the stages on the new versions: nothing is missing afterwards
    status = est.status()
    assert status["capacity"] == 1.0
    assert len(est.ledger.stages("live")) == summary["stages_total"]
    assert_served_equal_scratch(est, cfg, data, {first, victim}, full_depth=True)
    assert est.audit().ok
    # what a service's job reports, read from these events as the retrainer reads its child's
    job = Job(id="j", trigger="manual")
    for event in events:
        follow(job, JobEvent.model_validate_json(json.dumps(event)))
    assert (job.replans, job.stages_cancelled, job.stages_done) == (1, 1, summary["stages_trained"])
    assert job.stages_total == job.stages_done and job.phase == "fallback"


def test_primary_chains_of_the_shallowest_shard_first_and_fallbacks_last(fitted):
    est, _, _ = fitted
    # shard 0 keeps only ordering (2, 0, 1)'s first stage (depth 1); shard 1 keeps (0, 1)
    est.forget([retained(est, 0, 0), retained(est, 0, 1), retained(est, 1, 2)])
    records = {r.key: r for r in est.ledger.stages(None)}
    depth = {m: len(records[k].prefix) if k else 0 for m, k in est.ledger.routes().items()}
    assert depth == {0: 1, 1: 2}
    events: list[dict] = []
    est.retrain(progress=False, on_event=events.append)
    plan = next(e for e in events if e["event"] == "plan")
    primary = set(plan["primary"])
    starts = [e for e in events if e["event"] == "stage-start"]
    on_primary = [e["key"] in primary for e in starts]
    assert any(on_primary) and not all(on_primary)
    first_fallback = on_primary.index(False)
    assert all(on_primary[:first_fallback]) and not any(on_primary[first_fallback:])
    assert starts[0]["shard"] == 0 and starts[0]["prefix"] == [2, 0]  # the shallowest shard
    # phases: restoring while a primary stage trains or waits, then fallback
    assert [e["phase"] for e in starts] == (["restoring"] * first_fallback
                                            + ["fallback"] * (len(starts) - first_fallback))
    commits = [e for e in events if e["event"] == "stage-commit"]
    assert [e["key"] for e in commits] == [e["key"] for e in starts]
    assert all(e["eta_full_capacity_s"] > 0 for e in commits[:first_fallback - 1])
    assert all(e["eta_full_capacity_s"] == 0 for e in commits[first_fallback - 1:])
    assert est.status()["capacity"] == 1.0
