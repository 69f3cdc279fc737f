"""Background retraining in `s3t serve`: the retrain policy, the job API, stages serving as
they are committed, a deletion landing while a stage trains, and bitwise exactness after."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import SERVICE_TRAIN as TRAIN
from fastapi.testclient import TestClient
from test_exactness import assert_served_equal_scratch
from test_service import AUTH, serving
from typer.testing import CliRunner

from s3t.cli import app as cli
from s3t.engine import S3T
from s3t.run import Run
from s3t.service.logs import RequestIdFilter
from s3t.service.retrainer import RetrainPolicy
from s3t.train.scheduler import CellData, StageJob, prioritise

WAIT_S = 180  # bound on every wait for a background job (a loaded 2-core machine is slow)


def retained_sample(run: Path, shard: int, slice_: int) -> str:
    ledger = Run.open(run, repair=False).ledger
    try:
        return ledger.cell_samples(shard, slice_)[0][0]
    finally:
        ledger.close()


def wait_for(client: TestClient, done, what: str, predict: list | None = None) -> dict:
    """Poll the status until ``done(status)``; meanwhile predict, recording (start time,
    seconds, routes) of each prediction in ``predict``."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status = client.get("/v1/status").json()
        if done(status):
            return status
        if predict is not None:
            started = time.monotonic()
            response = client.post("/v1/predict", json={"inputs": ["red cat sun"]}, headers=AUTH)
            assert response.status_code == 200, response.text
            predict.append((started, time.monotonic() - started, response.json()["routes"],
                            status["retrain"]["job"]))
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {client.get('/v1/status').json()}")


def job_ended(status: dict) -> bool:
    job = status["retrain"]["job"]
    return job is not None and job["state"] in ("succeeded", "failed", "cancelled")


# --- pure parts --------------------------------------------------------------------------------

def test_retrain_policy_parses_and_decides():
    assert str(RetrainPolicy.parse("eager")) == "eager"
    assert RetrainPolicy.parse(" Capacity:0.8 ") == RetrainPolicy("capacity", 0.8)
    for bad in ("sometimes", "capacity:", "capacity:1.5", "capacity:0", "capacity:nan"):
        with pytest.raises(ValueError, match="manual, eager or capacity|threshold"):
            RetrainPolicy.parse(bad)
    full = {"live_stages": 8, "stages_total": 8, "capacity": 1.0}
    hit = {"live_stages": 6, "stages_total": 8, "capacity": 0.75}
    assert not RetrainPolicy.parse("manual").wants(hit)
    assert RetrainPolicy.parse("eager").wants(hit) and not RetrainPolicy.parse("eager").wants(full)
    assert RetrainPolicy.parse("capacity:0.8").wants(hit)
    assert not RetrainPolicy.parse("capacity:0.7").wants(hit)


def job(shard: int, prefix: tuple[int, ...]) -> StageJob:
    cell = CellData((shard, prefix[0]), 0, (), (), ())
    key = f"{shard}-" + "_".join(map(str, prefix))
    ancestors = tuple(f"{shard}-" + "_".join(map(str, prefix[:k])) for k in range(1, len(prefix)))
    return StageJob(key, shard, prefix, (0,) * len(prefix), ancestors[-1] if ancestors else None,
                    ancestors, (cell,))


LEAVES = [(0, 1, 2), (1, 2, 0)]
TREE = [(0,), (1,), (0, 1), (1, 2), (0, 1, 2), (1, 2, 0)]


def test_prioritise_raises_the_shallowest_shards_first_and_keeps_parents_first():
    # shard 0 lost everything; shard 1 still serves (0, 1) and misses only the leaf and the
    # other ordering
    jobs = [job(0, p) for p in TREE] + [job(1, p) for p in [(1,), (1, 2), (0, 1, 2), (1, 2, 0)]]
    live = {(1, (0,)): True, (1, (0, 1)): True}
    order = [(j.shard, j.prefix) for j in prioritise(jobs, live, LEAVES, 3, lambda d: True)]
    # primary chains first, round-robin by depth: shard 0 to depth 1, 2, then both leaves
    assert order[:4] == [(0, (0,)), (0, (0, 1)), (0, (0, 1, 2)), (1, (0, 1, 2))]
    assert set(order[4:]) == {(0, (1,)), (0, (1, 2)), (0, (1, 2, 0)), (1, (1,)), (1, (1, 2)),
                              (1, (1, 2, 0))}
    for i, (shard, prefix) in enumerate(order):  # every parent before its child
        assert all((shard, prefix[:k]) in order[:i] or live.get((shard, prefix[:k]))
                   for k in range(1, len(prefix)))


def test_prioritise_finishes_one_chain_at_a_time_when_only_full_depth_serves():
    jobs = [job(s, p) for s in (0, 1) for p in [(0,), (0, 1), (0, 1, 2)]]
    order = [(j.shard, j.prefix) for j in prioritise(jobs, {}, [(0, 1, 2)], 3, lambda d: d == 3)]
    assert order == [(0, (0,)), (0, (0, 1)), (0, (0, 1, 2)), (1, (0,)), (1, (0, 1)),
                     (1, (0, 1, 2))]


def test_serve_rejects_a_bad_retrain_policy(trained):
    result = CliRunner().invoke(cli, ["serve", str(trained), "--retrain", "often"])
    assert result.exit_code == 2 and "--retrain" in result.output and "eager" in result.output
    result = CliRunner().invoke(cli, ["serve", str(trained), "--retrain-delay", "-1"])
    assert result.exit_code == 2 and "--retrain-delay" in result.output


# --- the service -------------------------------------------------------------------------------

def test_manual_retrain_job_over_http(run_copy, caplog):
    caplog.set_level(logging.INFO, logger="s3t")
    caplog.handler.addFilter(RequestIdFilter())  # as the server's log handler does
    with serving(run_copy, eval_interval_s=0.1) as client:
        assert client.post("/v1/retrain").status_code == 401
        victim = retained_sample(run_copy, 1, 0)
        assert client.post("/v1/deletions", json={"sample_ids": [victim]},
                           headers=AUTH).status_code == 200
        time.sleep(1.5)  # manual: nothing starts on its own
        status = client.get("/v1/status").json()
        assert status["retrain"]["policy"] == "manual" and status["retrain"]["job"] is None
        assert status["capacity"] < 1
        accepted = client.post("/v1/retrain", headers={**AUTH, "X-Request-ID": "retrain-call-1"})
        assert accepted.status_code == 202
        job_id = accepted.json()["job"]["id"]
        again = client.post("/v1/retrain", headers=AUTH).json()["job"]["id"]
        assert again == job_id  # one job at a time: the active one is returned
        status = wait_for(client, job_ended, "the manual job")
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job
        assert job["stages_done"] == job["stages_total"] == 3 and job["last_route_switch"]
        assert status["capacity"] == 1.0 and status["training"] == "idle"
        assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job_id]
        assert client.get("/v1/jobs/nope").status_code == 404
        points = client.get("/v1/history").json()["points"]  # from the ledger
        events = [p["event"] for p in points]
        assert events[:8] == ["stage-commit"] * 8 and points[7]["capacity"] == 1.0  # training
        assert events[8:] == ["deletion"] + ["stage-commit"] * 3
        assert points[8]["capacity"] < 1 and points[-1]["capacity"] == 1.0
        assert [p["deletion_requests"] for p in points[8:]] == [1] * 4
        # the child's events: in the server log, at /v1/jobs/{id}/log (token) and in the file
        assert client.get(f"/v1/jobs/{job_id}/log").status_code == 401
        text = "\n".join(client.get(f"/v1/jobs/{job_id}/log", headers=AUTH).json()["lines"])
        assert text.count(" event ") >= 6 and text.count('"stage-commit"') == 3
        assert client.get("/v1/jobs/nope/log", headers=AUTH).status_code == 404
        logged = [r for r in caplog.records if r.name == "s3t.retrain"
                  and getattr(r, "job_id", None) == job_id]
        assert sum(getattr(r, "event", None) == "stage-commit" for r in logged) == 3
        assert any("succeeded" in r.getMessage() for r in logged)
        assert {getattr(r, "request_id", None) for r in logged} == {"retrain-call-1"}
        assert client.get(f"/v1/jobs/{job_id}").json()["request_id"] == "retrain-call-1"
        on_disk = (run_copy / "service" / "retrain.log").read_text()
        assert on_disk.count(f"{job_id} ") >= 6 and '"stage-commit"' in on_disk
        metrics = client.get("/metrics").text
        assert 's3t_retrain_jobs_total{state="succeeded"} 1.0' in metrics
        assert "s3t_route_switches_total 2.0" in metrics or "s3t_route_switches_total 3.0" in metrics


def test_eager_retrain_restores_capacity_while_predictions_are_served(run_copy, monkeypatch):
    # every stage waits 2 s between writing its files and committing: predictions made then
    # must still be answered at once (the trainer is another process holding no server lock)
    monkeypatch.setenv("S3T_FAULT", "train:after-stage-write=2")
    victims = [retained_sample(run_copy, 0, 0), retained_sample(run_copy, 1, 1)]
    predictions: list = []
    with serving(run_copy, retrain="eager", eval_interval_s=0.1) as client:
        certificate = client.post("/v1/deletions", json={"sample_ids": victims},
                                  headers={**AUTH, "X-Request-ID": "forget-2-samples"}).json()
        erased = set(certificate["erased_stages"])
        assert erased
        acknowledged = time.monotonic()
        status = wait_for(client, lambda s: job_ended(s) and s["capacity"] == 1.0,
                          "capacity back to 1.0", predict=predictions)
        assert status["retrain"]["job"]["state"] == "succeeded"
        assert status["retrain"]["job"]["trigger"] == "policy"
        history = client.get("/v1/history").json()
    during = [p for p in predictions if p[3] and p[3]["state"] == "running" and p[3]["current_stage"]]
    assert during, "no prediction was made while a stage trained"
    assert max(seconds for _, seconds, _, _ in during) < 1.0
    # no prediction after the acknowledgement used an erased stage; some used retrained ones
    assert all(not erased & set(routes.values()) for started, _, routes, _ in predictions
               if started > acknowledged)
    assert status["retrain"]["job"]["request_id"] == "forget-2-samples"  # the job it triggered
    assert history["evaluations"] and all(0 <= e["val_accuracy"] <= 1
                                          for e in history["evaluations"])
    assert history["points"][-1]["capacity"] == 1.0
    est = S3T.load(run_copy)
    try:  # bitwise: what is served now is what scratch training on the retained data gives
        assert_served_equal_scratch(est, est.config, TRAIN, set(victims), full_depth=True)
        assert est.audit().ok
    finally:
        est.close()


def test_deletion_while_its_stage_trains_discards_it(run_copy, monkeypatch):
    monkeypatch.setenv("S3T_FAULT", "train:after-stage-write=2")
    predictions: list = []
    with serving(run_copy, retrain="eager", eval_interval_s=5) as client:
        first = retained_sample(run_copy, 0, 0)
        client.post("/v1/deletions", json={"sample_ids": [first]}, headers=AUTH)
        status = wait_for(client, lambda s: bool(s["retrain"]["job"] and
                                                 s["retrain"]["job"]["current_stage"]),
                          "a stage in training")
        training = status["retrain"]["job"]["current_stage"]
        victim = retained_sample(run_copy, training["shard"], training["prefix"][-1])
        certificate = client.post("/v1/deletions", json={"sample_ids": [victim]},
                                  headers=AUTH).json()
        acknowledged = time.monotonic()
        wait_for(client, lambda s: s["capacity"] == 1.0 and job_ended(s) and
                 s["training"] == "idle", "the rebuilt routes", predict=predictions)
        jobs = client.get("/v1/jobs").json()["jobs"]
    assert victim in certificate["samples"]
    assert sum(j["stages_discarded"] for j in jobs) >= 1
    assert all(training["key"] not in routes.values()
               for started, _, routes, _ in predictions if started > acknowledged)
    run = Run.open(run_copy, repair=False)
    try:
        assert not run.ledger.is_live(training["key"])  # never went live: discarded
        assert run.audit().ok
    finally:
        run.close()
    est = S3T.load(run_copy)
    try:
        assert_served_equal_scratch(est, est.config, TRAIN, {first, victim}, full_depth=True)
    finally:
        est.close()


def test_a_failed_job_is_reported_and_the_policy_backs_off(tmp_path):
    from s3t.service.retrainer import Retrainer

    events: list[str] = []
    status = {"live_stages": 1, "stages_total": 2, "capacity": 0.5, "training": "idle"}
    retrainer = Retrainer(tmp_path / "missing-run", RetrainPolicy.parse("eager"), 0.0,
                          lambda: status, lambda event, job: events.append(event),
                          log_path=tmp_path / "retrain.log")
    retrainer.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not (retrainer.last() and
                                                    not retrainer.last().active):
            time.sleep(0.1)
        job = retrainer.last()
        assert job is not None and job.state == "failed" and job.trigger == "policy"
        assert "exited with" in job.error and "missing-run" in job.error
        time.sleep(2.5)  # within the back-off: the policy does not start another job
        assert len(retrainer.jobs) == 1 and events == ["retrain-start", "retrain-end"]
        assert retrainer.request() is not job  # a manual request does not wait for it
    finally:
        retrainer.stop()


def test_a_job_reports_its_expected_end_and_full_capacity():
    """From its child's events: the end from the wall time per settled stage since the plan,
    never before the scheduler's full capacity, which is an absolute time."""
    from s3t.contract import Job, JobEvent
    from s3t.service.retrainer import estimate_end, follow

    job = Job(id="j", trigger="manual", state="running", started=990.0)
    planned = 1000.0

    def event(now: float, name: str, **fields) -> float | None:
        follow(job, JobEvent(event=name, **fields), now)
        return estimate_end(job, planned, now)

    assert event(1000.0, "plan", stages=4, phase="restoring", eta_full_capacity_s=None) is None
    assert job.stages_total == 4  # nothing measured yet
    assert event(1001.0, "stage-start", key="a", shard=0, prefix=[0]) is None
    assert job.eta_full_capacity_at is None
    end = event(1010.0, "stage-commit", key="a", shard=0, prefix=[0], seconds=9.0,
                phase="restoring", eta_full_capacity_s=15.0)
    # 10 s per settled stage since the plan, 3 stages left
    assert job.eta_full_capacity_at == 1025.0 and end == 1040.0
    end = event(1030.0, "stage-discard", key="b", shard=1, prefix=[0], phase="restoring",
                eta_full_capacity_s=100.0)
    # 15 s per settled stage, 3 left, but full capacity comes later still: not before it
    assert job.eta_full_capacity_at == 1130.0 and end == 1130.0
    end = event(1040.0, "stage-commit", key="c", shard=1, prefix=[0], seconds=5.0,
                phase="fallback", eta_full_capacity_s=0.0)
    assert job.phase == "fallback" and end == pytest.approx(1040 + 40 / 3 * 2, abs=1e-3)
    assert estimate_end(job, None, 1040.0) is None  # no plan seen: no estimate


def test_stopping_the_server_cancels_the_job_and_leaves_a_clean_run(run_copy, monkeypatch):
    monkeypatch.setenv("S3T_FAULT", "train:after-stage-write=120")  # written, never committed
    with serving(run_copy) as client:
        victim = retained_sample(run_copy, 0, 1)
        client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        job_id = client.post("/v1/retrain", headers=AUTH).json()["job"]["id"]
        wait_for(client, lambda s: bool(s["retrain"]["job"]["current_stage"]), "a stage")
        time.sleep(1.0)  # its files are written while it waits at the fault point
        retrainer = client.app.state.service.retrainer
    job = retrainer.job(job_id)
    assert job is not None and job.state == "cancelled" and job.stages_done == 0
    run = Run.open(run_copy, repair=False)  # as `s3t audit` opens it: nothing repaired here
    try:
        report = run.audit()
        assert report.ok, report.violations
    finally:
        run.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_the_retrain_child_dies_with_a_server_killed_by_sigkill(run_copy, tmp_path, monkeypatch):
    import os
    import signal

    import httpx
    from test_service import free_port, start_server

    port, log = free_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("S3T_FAULT", "train:after-stage-write=120")  # the child waits there
    server = start_server(run_copy, port, log)
    children: list[int] = []
    try:
        victim = retained_sample(run_copy, 0, 1)
        assert httpx.post(f"{base}/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH,
                          timeout=60).status_code == 200
        assert httpx.post(f"{base}/v1/retrain", headers=AUTH, timeout=60).status_code == 202
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not children:
            children = [c for c in _children(server.pid)
                        if b"retrain" in (Path("/proc") / str(c) / "cmdline").read_bytes()]
            time.sleep(0.2)
        assert children, "the retrain child started"
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(c) for c in children):
        time.sleep(0.1)
    alive = [c for c in children if _running(c)]
    for pid in alive:  # never leave it behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the retrain child outlived the server"
