"""Defects of the service found in a read of the code (issue 26), each with a test that
fails without its fix: a damaged live stage is reported as such (not retried forever), the
history thread logs what it did not expect, and the idempotency fingerprint is keyed with
the run's secret as the ledger's group hashes are."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time

from fastapi.testclient import TestClient

from s3t.run import IntegrityError, NoLiveShardError, Run
from s3t.service import create_app
from s3t.service.history import History

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def live_stage(run) -> str:
    records = Run.open(run, repair=False)
    try:
        return records.ledger.stages("live")[0].key
    finally:
        records.close()


def test_a_damaged_live_stage_says_retrain_and_is_not_retried(run_copy):
    """A stage file that fails its check while the stage is still live is damage: 503 that
    says to run `s3t retrain`, no Retry-After (retrying can never help), no path."""
    key = live_stage(run_copy)
    # eval_size 0: the history measures nothing, so only the request calls the model
    with TestClient(create_app(run_copy, token=TOKEN, eval_size=0)) as client:
        engine = client.app.state.service.model.model
        calls = []

        def damaged(inputs):
            calls.append(1)
            raise IntegrityError(f"stage {key}: file {run_copy}/stages/0/{key}/adapter."
                                 "safetensors is missing; run `s3t retrain`", key)

        engine.predict = damaged
        response = client.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH)
    assert response.status_code == 503, response.text
    assert "retry-after" not in response.headers
    message = response.json()["message"]
    assert "s3t retrain" in message and "kept disappearing" not in message
    assert str(run_copy) not in message and len(calls) == 1


def test_a_stage_erased_by_a_deletion_during_a_call_is_retried(run_copy):
    with TestClient(create_app(run_copy, token=TOKEN, eval_size=0)) as client:
        records = Run.open(run_copy, repair=False)
        victim = records.ledger.cell_samples(0, 0)[0][0]
        records.close()
        deleted = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        erased = deleted.json()["erased_stages"][0]
        engine = client.app.state.service.model.model
        real, calls = engine.predict, []

        def erased_once(inputs):
            calls.append(1)
            if len(calls) == 1:
                raise IntegrityError(f"stage {erased}: file is missing", erased)
            return real(inputs)

        engine.predict = erased_once
        response = client.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert len(calls) == 2


def run_history(evaluate, caplog) -> list[logging.LogRecord]:
    status = {"capacity": 1.0, "live_shards": 1, "deletion_requests": 0, "deleted": 0}
    history = History(lambda: status, evaluate, eval_interval_s=0)
    with caplog.at_level(logging.DEBUG, logger="s3t.service"):
        history.start()
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
        history.stop()
    return [r for r in caplog.records if r.name == "s3t.service"]


def test_stopping_the_history_wakes_its_pause_between_evaluations():
    """A server with a long eval interval must shut down at once, not after the pause (the
    loop slept through it, and ``stop`` gave up waiting after 30 s)."""
    calls = []
    history = History(lambda: [], lambda: calls.append(1) or 0.5, eval_interval_s=600)
    history.start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    history.changed()  # the next evaluation waits out the 600 s interval
    time.sleep(0.2)
    history.stop()
    assert calls == [1]
    assert history._thread is not None and not history._thread.is_alive()


def test_history_logs_an_unexpected_failure_as_an_error(caplog):
    def broken():
        raise KeyError("capacity")  # a bug, not a state of the run

    records = run_history(broken, caplog)
    assert records and records[0].levelno >= logging.WARNING
    assert records[0].exc_info is not None


def test_history_keeps_an_expected_failure_at_debug(caplog):
    def dead():
        raise NoLiveShardError("every shard needs a retrain")

    records = run_history(dead, caplog)
    assert records and all(r.levelno == logging.DEBUG for r in records)


def test_the_idempotency_fingerprint_is_keyed_with_the_runs_secret(run_copy):
    from s3t.run.deletion import DeletionRequest

    secret_a, secret_b = "aa" * 32, "bb" * 32
    body = DeletionRequest.of(["s1", "s2"], ["user3"], "k")
    assert body.fingerprint(secret_a) != body.fingerprint(secret_b)  # needs the run's secret
    assert DeletionRequest.of(["s2", "s1", "s1"], ["user3"], "k").fingerprint(secret_a) \
        == body.fingerprint(secret_a)  # order and repeats do not matter
    unkeyed = hashlib.sha256(json.dumps({"groups": ["user3"], "sample_ids": ["s1", "s2"]},
                                        separators=(",", ":")).encode()).hexdigest()
    assert unkeyed != body.fingerprint(secret_a)

    clear = "user0"  # the toy data set's first group key (tests/tiny.py)
    with TestClient(create_app(run_copy, token=TOKEN)) as client:
        response = client.post("/v1/deletions", json={"groups": [clear], "request_id": "k1"},
                               headers=AUTH)
        assert response.status_code == 200, response.text
        again = client.post("/v1/deletions", json={"groups": [clear], "request_id": "k1"},
                            headers=AUTH)
        assert again.status_code == 200 and again.headers["S3T-Replayed"] == "true"
    # the client keys live in the ledger (the run decides what is a replay), keyed
    stored = sqlite3.connect(run_copy / "ledger.sqlite").execute(
        "SELECT fingerprint FROM client_keys").fetchone()[0]
    plain = hashlib.sha256(json.dumps({"groups": [clear], "sample_ids": []},
                                      separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    assert plain not in stored and clear not in stored
