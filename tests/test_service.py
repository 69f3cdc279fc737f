"""`s3t serve`: the HTTP service on a tiny BERT run (TestClient, and one real server that is
killed with SIGKILL and restarted)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tiny import make_tiny_llama, toy_instructions
from typer.testing import CliRunner

from s3t.cli import app as cli
from s3t.config import S3TConfig
from s3t.run import Run
from s3t.service import create_app
from s3t.service.batching import Batcher

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def serving(run: Path, **kwargs):
    kwargs.setdefault("token", TOKEN)
    # status, history, jobs and metrics read without the token (tests/test_access.py tests
    # the default, where they need it)
    kwargs.setdefault("open_status", True)
    with TestClient(create_app(run, **kwargs)) as client:
        yield client


@pytest.fixture(scope="module")
def served(trained):
    """A server on the shared run, for tests that delete nothing."""
    with serving(trained, max_inputs=4, max_body_bytes=4000) as client:
        yield client


def samples_in(run: Path, cell: tuple[int, int], n: int = 1) -> list[str]:
    """The first ``n`` training samples of a cell (shard, slice)."""
    ledger = Run.open(run, repair=False).ledger
    rows = ledger.conn.execute("SELECT sample_id FROM samples WHERE shard = ? AND slice = ? AND "
                               "deleted_version IS NULL ORDER BY sample_id", cell).fetchall()
    ledger.close()
    return [r[0] for r in rows[:n]]


def deletion_count(run: Path) -> int:
    ledger = Run.open(run, repair=False).ledger
    try:
        return ledger.deletion_count()
    finally:
        ledger.close()


# --- serving -----------------------------------------------------------------------------------

def test_predict_returns_labels_probabilities_and_routes(served):
    texts = ["red cat dog", "blue fish sun", "green tree moon"]
    response = served.post("/v1/predict", json={"inputs": texts}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["labels"]) == 3 and set(body["labels"]) <= {"red", "green", "blue"}
    assert all(len(row) == 3 and abs(sum(row) - 1) < 1e-6 for row in body["probabilities"])
    status = served.get("/v1/status").json()
    assert body["routes"] == {m: r["stage"] for m, r in status["routes"].items()} != {}
    assert body["live_shards"] == status["live_shards"] == 2
    # the token is needed for predictions unless --open-predict
    assert served.post("/v1/predict", json={"inputs": texts}).status_code == 401
    wrong = served.post("/v1/predict", json={"inputs": texts}, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    assert wrong.headers["www-authenticate"] == "Bearer" and TOKEN not in wrong.text


def test_open_predict_and_no_token(trained):
    with serving(trained, open_predict=True) as client:
        assert client.post("/v1/predict", json={"inputs": ["red"]}).status_code == 200
        assert client.get("/v1/audit").status_code == 401
    with serving(trained, token=None) as client:  # loopback without a token: all open
        assert client.get("/v1/audit").json()["ok"] is True


def test_invalid_requests_are_clear_json_errors(served):
    for body in ({"inputs": "red cat"}, {"inputs": [1, 2]}, {"inputs": []}, {"text": ["a"]}):
        response = served.post("/v1/predict", json=body, headers=AUTH)
        assert response.status_code == 422, body
        assert response.json()["error"] == "invalid_request"
        assert response.json()["message"].startswith("invalid request: inputs")
    malformed = served.post("/v1/predict", content=b'{"inputs": [', headers={
        **AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 422 and "JSON" in malformed.json()["message"]
    for body in ({"sample_ids": [1]}, {"ids": ["s0001"]}, {"groups": "user1"}):
        assert served.post("/v1/deletions", json=body, headers=AUTH).status_code == 422, body
    # a classifier cannot generate: an input the model cannot take
    response = served.post("/v1/generate", json={"prompt": "hi"}, headers=AUTH)
    assert response.status_code == 422 and "classifier" in response.json()["message"]
    assert served.post("/v1/deletions", json={}, headers=AUTH).status_code == 400


def test_too_many_inputs_or_too_large_a_body_is_413(served):
    response = served.post("/v1/predict", json={"inputs": ["red"] * 5}, headers=AUTH)
    assert response.status_code == 413 and "at most 4" in response.json()["message"]
    response = served.post("/v1/predict", json={"inputs": ["red " * 1200]}, headers=AUTH)
    assert response.status_code == 413 and response.json()["error"] == "too_large"

    def chunks():  # no Content-Length: read up to the limit, then refused
        for _ in range(10):
            yield b" " * 1000
    response = served.post("/v1/predict", content=chunks(), headers={
        **AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413


def test_status_audit_health_readiness_and_metrics(served):
    assert served.get("/healthz").json() == {"status": "ok"}
    ready = served.get("/readyz")
    assert ready.status_code == 200 and ready.json()["live_shards"] == 2
    status = served.get("/v1/status").json()
    assert status["training"] == "idle" and status["shards"] == 2
    assert served.get("/v1/audit").status_code == 401
    audit = served.get("/v1/audit", headers=AUTH).json()
    assert audit["ok"] is True and audit["checked"]["live_stages"] == 8
    assert served.get("/v1/deletions", headers=AUTH).json()["total"] == 0
    served.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH)
    text = served.get("/metrics").text
    for line in ('s3t_http_requests_total{endpoint="/v1/predict",method="POST",status="200"}',
                 's3t_http_requests_total{endpoint="/v1/audit",method="GET",status="401"}',
                 "s3t_deletions_total 0.0", "s3t_live_shards 2.0", "s3t_capacity 1.0",
                 "s3t_live_stages 8.0", "s3t_predict_batch_inputs_count",
                 's3t_http_request_duration_seconds_count{endpoint="/v1/predict",method="POST"}'):
        assert line in text, line
    assert served.get("/docs").status_code == 200
    assert "/v1/deletions" in served.get("/openapi.json").json()["paths"]


# --- deletions ---------------------------------------------------------------------------------

def test_deletions_need_the_token_and_take_effect_before_the_answer(run_copy):
    victim = samples_in(run_copy, (0, 0))[0]
    with serving(run_copy) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            response = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=headers)
            assert response.status_code == 401
        assert client.get("/v1/deletions", headers={}).status_code == 401
        assert deletion_count(run_copy) == 0
        response = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        assert response.status_code == 200, response.text
        certificate = response.json()
        assert certificate["samples"] == [victim] and certificate["files_erased"] is True
        erased = set(certificate["erased_stages"])
        assert erased and all(k.startswith("0-") for k in erased)
        routes = client.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH).json()["routes"]
        assert not erased & set(routes.values())
        rid = certificate["request_id"]
        assert client.get(f"/v1/deletions/{rid}", headers=AUTH).json() == certificate
        page = client.get("/v1/deletions?offset=0&limit=10", headers=AUTH).json()
        assert page["total"] == 1 and page["certificates"] == [certificate]
        assert client.get("/v1/deletions?limit=0", headers=AUTH).status_code == 422
        assert client.get("/v1/deletions/nope", headers=AUTH).status_code == 404
        assert "s3t_deletions_total 1.0" in client.get("/metrics").text
        assert client.get("/v1/audit", headers=AUTH).json()["ok"] is True


def test_idempotent_retry_returns_the_same_certificate_and_409_on_another_body(run_copy):
    first, other = samples_in(run_copy, (1, 1), 2)
    with serving(run_copy) as client:
        body = {"sample_ids": [first], "request_id": "client-key-1"}
        one = client.post("/v1/deletions", json=body, headers=AUTH)
        two = client.post("/v1/deletions", json=body, headers=AUTH)
        assert one.status_code == two.status_code == 200
        assert one.json() == two.json()
        assert (one.headers["s3t-replayed"], two.headers["s3t-replayed"]) == ("false", "true")
        conflict = client.post("/v1/deletions", json={"sample_ids": [other],
                                                      "request_id": "client-key-1"}, headers=AUTH)
        assert conflict.status_code == 409 and conflict.json()["error"] == "conflict"
        assert client.get("/v1/deletions/client-key-1", headers=AUTH).json() == one.json()
        assert deletion_count(run_copy) == 1
        assert samples_in(run_copy, (1, 1), 2)[0] == other  # still there
    ledger = Run.open(run_copy, repair=False).ledger  # the key is the run's, in its ledger
    try:
        assert ledger.client_key("client-key-1")[1] == one.json()["request_id"]
    finally:
        ledger.close()
    with serving(run_copy) as client:  # the key survives a restart
        again = client.post("/v1/deletions", json=body, headers=AUTH)
        assert again.json() == one.json() and again.headers["s3t-replayed"] == "true"


def test_the_log_names_client_request_ids_and_the_status_the_last_audit_and_its_chain(run_copy):
    """What the operator's page shows beside the certificates: the client's request_id of
    each (kept apart from the chained certificate), and this server's last audit with
    whether the certificate chain held, which a tampered certificate breaks."""
    keyed, other = samples_in(run_copy, (0, 0), 1), samples_in(run_copy, (1, 1), 1)
    with serving(run_copy) as client:
        one = client.post("/v1/deletions", json={"sample_ids": keyed, "request_id": "ticket-7"},
                          headers=AUTH).json()
        client.post("/v1/deletions", json={"sample_ids": other}, headers=AUTH)
        log = client.get("/v1/deletions", headers=AUTH).json()
        assert log["client_request_ids"] == {one["request_id"]: ["ticket-7"]}
        assert all("client_request_ids" not in c for c in log["certificates"])
        status = client.get("/v1/status").json()
        assert status["last_audit"] is None
        assert status["traffic"]["deletions"]["requests"] == 2
        audit = client.get("/v1/audit", headers=AUTH).json()
        assert audit["ok"] is True and audit["chain_intact"] is True
        last = client.get("/v1/status").json()["last_audit"]
        assert (last["ok"], last["violations"], last["chain_intact"], last["certificates"]) == (
            True, 0, True, 2)

        ledger = Run.open(run_copy, repair=False).ledger  # an edit outside s3t
        try:
            tampered = {**ledger.certificate(one["request_id"]).to_dict(),
                        "time": "2000-01-01T00:00:00Z"}
            with ledger.transaction():
                ledger.conn.execute("UPDATE deletions SET certificate = ? WHERE request_id = ?",
                                    (json.dumps(tampered), one["request_id"]))
        finally:
            ledger.close()
        audit = client.get("/v1/audit", headers=AUTH).json()
        assert audit["ok"] is False and audit["chain_intact"] is False
        last = client.get("/v1/status").json()["last_audit"]
        assert last["ok"] is False and last["chain_intact"] is False
        assert last["violations"] == len(audit["violations"]) >= 1


def test_unknown_ids_or_groups_are_404_and_nothing_is_deleted(run_copy):
    known = samples_in(run_copy, (0, 1))[0]
    with serving(run_copy) as client:
        response = client.post("/v1/deletions", json={"sample_ids": [known, "no-such-id"]},
                               headers=AUTH)
        assert response.status_code == 404 and "no-such-id" in response.json()["message"]
        response = client.post("/v1/deletions", json={"groups": ["no-such-group"]}, headers=AUTH)
        assert response.status_code == 404 and "no-such-group" in response.json()["message"]
        assert deletion_count(run_copy) == 0 and samples_in(run_copy, (0, 1))[0] == known
        # a validation sample is refused (never deletable): 422, nothing deleted
        response = client.post("/v1/deletions", json={"sample_ids": ["e0"]}, headers=AUTH)
        assert response.status_code == 422 and "validation" in response.json()["message"]
        assert deletion_count(run_copy) == 0
        groups = client.post("/v1/deletions", json={"groups": ["user3"]}, headers=AUTH)
        assert groups.status_code == 200 and groups.json()["groups_hmac"]


def test_a_run_without_a_live_shard_is_not_ready_and_predictions_are_503(run_copy):
    victims = [samples_in(run_copy, cell)[0] for cell in ((0, 0), (0, 1), (1, 0), (1, 1))]
    with serving(run_copy) as client:
        for victim in victims:
            response = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
            assert response.status_code == 200
        assert response.json()["live_shards"] == 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        response = client.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH)
        assert response.status_code == 503 and "retrain" in response.json()["message"]
        assert "s3t_live_shards 0.0" in client.get("/metrics").text


def test_generate_on_a_causal_lm_run(tmp_path):
    from s3t.engine import S3T

    model = make_tiny_llama(tmp_path / "tiny-llama")
    config = S3TConfig(model=model, shards=1, slices=2, budget=1, epochs=1, batch_size=8,
                       lora_r=2, lora_alpha=4, max_seq_len=48, seed=3)
    S3T(config, run_dir=tmp_path / "lm").fit(toy_instructions(16), progress=False).close()
    with serving(tmp_path / "lm") as client:
        response = client.post("/v1/generate", json={"prompt": "colour of cat?",
                                                      "max_new_tokens": 3}, headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body["text"], str) and body["tokens"] <= 3
        assert list(body["routes"]) == ["0"] and body["live_shards"] == 1
        bad = client.post("/v1/generate", json={"prompt": "x", "max_new_tokens": -1}, headers=AUTH)
        assert bad.status_code == 422
        refused = client.post("/v1/predict", json={"inputs": ["x"]}, headers=AUTH)
        assert refused.status_code == 422 and "generate" in refused.json()["message"]


@pytest.mark.parametrize(("workers", "orderings"), [(1, "best"), (2, "best"), (2, "all")])
def test_no_prediction_after_a_deletion_is_acknowledged_uses_an_erased_stage(run_copy, workers,
                                                                              orderings):
    """Predictions race deletions through the service: every prediction that started after a
    deletion's response reports routes without any stage that deletion erased (one model
    call at a time, and several at once: each call's own routes snapshot), and with
    serve_orderings 'all' none of the stages it served (``routes_all``) either."""
    card = json.loads((run_copy / "s3t.json").read_text())
    card["config"]["serve_orderings"] = orderings  # serving only: the weights are the same
    (run_copy / "s3t.json").write_text(json.dumps(card, indent=2))
    # slice 0 of each shard, then slice 1 of shard 0 (shard 0 dies; shard 1 keeps serving)
    victims = [samples_in(run_copy, cell)[0] for cell in ((0, 0), (1, 0), (0, 1))]
    victims.append(samples_in(run_copy, (1, 0), 2)[1])
    acks: list[tuple[float, set[str]]] = []
    predictions: list[tuple[float, set[str], dict]] = []
    failures: list[str] = []
    done = threading.Event()
    deadline = time.monotonic() + 30
    with serving(run_copy, max_wait_ms=2, workers=workers) as client:
        first = client.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH).json()
        per_shard = 2 if orderings == "all" else 1  # m=2, B=2: both orderings at depth 2
        assert [len(keys) for keys in first["routes_all"].values()] == [per_shard] * 2, first

        def predictor(seed: int) -> None:
            extra = 0
            for i in range(80):  # bounded in count and in time
                if time.monotonic() > deadline or extra >= 3:
                    break
                extra += done.is_set()
                started = time.monotonic()
                response = client.post("/v1/predict", json={"inputs": [f"red cat {i} {seed}"]},
                                       headers=AUTH)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                body = response.json()
                if body["routes"] != {m: keys[0] for m, keys in body["routes_all"].items()}:
                    failures.append(f"routes {body['routes']} do not lead routes_all")
                predictions.append((started, {k for keys in body["routes_all"].values()
                                              for k in keys}, body["routes"]))

        def deleter() -> None:
            try:
                for victim in victims:
                    time.sleep(0.05)
                    response = client.post("/v1/deletions", json={"sample_ids": [victim]},
                                           headers=AUTH)
                    if response.status_code != 200:
                        failures.append(response.text)
                        continue
                    acks.append((time.monotonic(), set(response.json()["erased_stages"])))
            finally:
                done.set()

        threads = [threading.Thread(target=predictor, args=(k,)) for k in range(3)]
        threads.append(threading.Thread(target=deleter))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:3]
    assert len(acks) == 4 and sum(bool(erased) for _, erased in acks) == 3
    after = [t for t, _, _ in predictions if t > acks[0][0]]
    assert after, "no prediction started after the first deletion was acknowledged"
    for started, used, _ in predictions:
        for acked, erased in acks:
            if started > acked:
                assert not erased & used, (used, erased)
    assert list(predictions[-1][2]) == ["1"]  # shard 0 lost both slices' first stages


def test_batcher_gathers_concurrent_requests_into_one_call():
    calls: list[list[str]] = []

    def call(items: list[str]) -> list[str]:
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad input")
        return [x.upper() for x in items]

    async def main() -> list:
        batcher = Batcher(call, lambda out, a, b: out[a:b], max_batch=8, max_wait_ms=50)
        await batcher.start()
        try:
            requests = [["a", "b"], ["c"], ["d", "e", "f"], ["bad"], ["g"]]
            results = await asyncio.wait_for(asyncio.gather(
                *(batcher.submit(r) for r in requests), return_exceptions=True), 10)
            too_big = await asyncio.wait_for(batcher.submit(list("abcdefghij")), 10)
        finally:
            await batcher.stop()
        return [*results, too_big]

    results = asyncio.run(main())
    assert results[:3] == [["A", "B"], ["C"], ["D", "E", "F"]] and results[4] == ["G"]
    assert isinstance(results[3], ValueError)  # only the bad request fails
    assert calls[0] == ["a", "b", "c", "d", "e", "f", "bad", "g"]  # one call for all five
    # a request larger than a batch is served in batch-sized chunks, joined in order
    assert results[5] == list("ABCDEFGHIJ") and calls[-2:] == [list("abcdefgh"), ["i", "j"]]


def test_a_small_request_is_served_between_the_chunks_of_a_large_one():
    """Fair serving, deterministically: a fake model records the batches it is called with;
    the first call waits until a 1-text request has been submitted after a 256-text one.
    The small request is answered in the very next call, long before the large one's last
    chunk, and the large one gets every one of its inputs back in order."""
    calls: list[list[str]] = []
    first_call = threading.Event()
    small_queued = threading.Event()

    def call(items: list[str]) -> list[str]:
        calls.append(list(items))
        first_call.set()
        small_queued.wait(10)
        return [x.upper() for x in items]

    async def main() -> tuple[list[str], list[str]]:
        batcher = Batcher(call, lambda out, a, b: out[a:b], max_batch=32, max_wait_ms=0)
        await batcher.start()
        try:
            large = asyncio.ensure_future(batcher.submit([f"big{i}" for i in range(256)]))
            while not first_call.is_set():
                await asyncio.sleep(0.01)
            small = asyncio.ensure_future(batcher.submit(["small"]))
            await asyncio.sleep(0.05)  # queued (the model is still busy with the first chunk)
            small_queued.set()
            return await asyncio.wait_for(asyncio.gather(large, small), 30)
        finally:
            await batcher.stop()

    large, small = asyncio.run(main())
    assert small == ["SMALL"] and large == [f"BIG{i}" for i in range(256)]
    assert all(len(c) <= 32 for c in calls) and sum(map(len, calls)) == 257
    served_small = next(k for k, c in enumerate(calls) if "small" in c)
    last_large = max(k for k, c in enumerate(calls) if any(x.startswith("big") for x in c))
    assert served_small == 1 < last_large == len(calls) - 1, calls


def test_a_stream_of_small_requests_does_not_starve_a_large_one():
    """Small requests keep arriving and would fill every batch; the large request still gets
    room in at least every other call."""
    calls: list[list[str]] = []

    def call(items: list[str]) -> list[str]:
        calls.append(list(items))
        time.sleep(0.01)
        return items

    async def main() -> None:
        batcher = Batcher(call, lambda out, a, b: out[a:b], max_batch=4, max_wait_ms=0)
        await batcher.start()
        try:
            large = asyncio.ensure_future(batcher.submit([f"big{i}" for i in range(12)]))
            smalls = []
            while not large.done() and len(smalls) < 400:
                smalls.append(asyncio.ensure_future(batcher.submit(["s"] * 4)))
                await asyncio.sleep(0.002)
            await asyncio.wait_for(asyncio.gather(large, *smalls), 30)
        finally:
            await batcher.stop()

    asyncio.run(main())
    with_large = [k for k, c in enumerate(calls) if any(x.startswith("big") for x in c)]
    assert len(with_large) >= 3
    assert all(b - a <= 2 for a, b in zip(with_large, with_large[1:], strict=False)), calls


def test_batcher_workers_run_batches_at_the_same_time():
    """With workers=2 the requests waiting are shared between two calls that run at the same
    time (each waits at a two-party barrier: one call at a time would break it): four
    waiting requests make two calls of two, not one of four nor four of one."""
    barrier = threading.Barrier(2, timeout=5)
    calls: list[list[str]] = []

    def call(items: list[str]) -> list[str]:
        calls.append(list(items))
        barrier.wait()
        return [x.upper() for x in items]

    async def main(workers: int) -> list:
        batcher = Batcher(call, lambda out, a, b: out[a:b], max_batch=4, max_wait_ms=20,
                          workers=workers)
        await batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(
                *(batcher.submit([x]) for x in "abcd"), return_exceptions=True), 20)
        finally:
            await batcher.stop()

    assert asyncio.run(main(2)) == [["A"], ["B"], ["C"], ["D"]]
    assert sorted(map(sorted, calls)) == [["a", "b"], ["c", "d"]]
    barrier.reset()
    calls.clear()
    results = asyncio.run(main(1))  # one call for all four: its barrier breaks
    assert isinstance(results[0], threading.BrokenBarrierError) and calls == [list("abcd")]


def adapter_switches(backbone) -> list[tuple[str, bool]]:
    """Whether each LoRA module of the shared backbone is switched off (peft's public flag)."""
    from peft.tuners.lora import LoraLayer

    return [(name, module.disable_adapters) for name, module in backbone.model.named_modules()
            if isinstance(module, LoraLayer)]


def test_model_calls_run_concurrently_and_never_mutate_the_backbone(trained):
    """Two predictions through the guarded model are inside the model at the same time (both
    reach a two-party barrier in the layers; a model lock would break it), and serving
    leaves the shared backbone exactly as it was: no head loaded, no adapter switched."""
    from s3t.engine import S3T
    from s3t.service.guard import GuardedModel

    engine = S3T.load(trained)
    model = GuardedModel(engine)
    try:
        model.warm()
        backbone = engine.backbone
        before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
        switches = adapter_switches(backbone)
        family = backbone.family
        barrier = threading.Barrier(2, timeout=10)
        real_apply = family.apply_layers
        met: list[bool] = []

        def apply_layers(layers, hidden, mask):
            if not met and threading.current_thread().name.startswith("predict"):
                barrier.wait()
                met.append(True)
            return real_apply(layers, hidden, mask)

        family.apply_layers = apply_layers
        out: dict[str, object] = {}

        def predict(name: str) -> None:
            try:
                out[name] = model.predict(["red cat", "blue fish sun moon"])
            except Exception as err:  # noqa: BLE001 (reported below)
                out[name] = err

        threads = [threading.Thread(target=predict, args=(f"predict-{k}",), name=f"predict-{k}")
                   for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        del family.apply_layers
        assert met and not any(isinstance(v, Exception) for v in out.values()), out
        (one, routes), (two, _) = out["predict-0"], out["predict-1"]
        np.testing.assert_allclose(one.probabilities, two.probabilities, atol=1e-6)
        assert routes == {str(k): v for k, v in one.routes.items()} and len(routes) == 2
        after = backbone.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert switches == adapter_switches(backbone)
    finally:
        model.close()


def test_a_batch_is_split_by_token_length_and_answers_in_request_order(trained):
    """Texts of very different lengths run in separate chunks (short ones are not padded to
    the longest), and each text's probabilities are those it gets alone."""
    from s3t.engine import S3T
    from s3t.serve.ensemble import Ensemble, length_chunks

    assert length_chunks([3, 40, 4, 41], 8, overhead=10) == [[0, 2], [1, 3]]
    assert length_chunks([5] * 6, 8) == [[0, 1, 2, 3, 4, 5]]
    assert [len(c) for c in length_chunks([5] * 6, 4)] in ([2, 4], [4, 2], [3, 3])
    engine = S3T.load(trained)
    try:
        texts = ["red " * 30, "cat", "blue fish " * 12, "sun", "green tree moon"]
        sizes: list[int] = []
        real = Ensemble.predict_proba

        def counted(self, inputs, *args, **kwargs):
            sizes.append(len(inputs))
            return real(self, inputs, *args, **kwargs)

        Ensemble.predict_proba = counted
        try:
            together = engine.predict(texts)
        finally:
            Ensemble.predict_proba = real
        assert len(sizes) > 1 and sum(sizes) == len(texts)
        for i, text in enumerate(texts):
            alone = engine.predict([text])
            assert alone.labels[0] == together.labels[i]
            np.testing.assert_allclose(alone.probabilities[0], together.probabilities[i],
                                       atol=1e-6)
    finally:
        engine.close()


def test_model_calls_run_on_their_own_nicer_threads_and_deletions_do_not(run_copy, monkeypatch):
    """Predictions run on the service's model threads, niced, so a deletion (on asyncio's
    default threads, at the process's priority) gets the CPU first on a busy machine."""
    from s3t.service.guard import GuardedModel

    seen: dict[str, tuple[str, int]] = {}

    def spy(name: str, real):
        def wrapped(self, *args):
            seen[name] = (threading.current_thread().name,
                          os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return real(self, *args)
        return wrapped

    monkeypatch.setattr(GuardedModel, "predict", spy("predict", GuardedModel.predict))
    monkeypatch.setattr(GuardedModel, "forget", spy("forget", GuardedModel.forget))
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with serving(run_copy, workers=2) as client:
        assert client.post("/v1/predict", json={"inputs": ["red"]}, headers=AUTH).status_code == 200
        victim = samples_in(run_copy, (1, 1))[0]
        response = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        assert response.status_code == 200
    assert seen["predict"][0].startswith("s3t-model") and seen["predict"][1] > base
    assert not seen["forget"][0].startswith("s3t-model") and seen["forget"][1] == base


def test_serve_refuses_a_public_host_without_a_token(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("S3T_API_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", str(trained), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without a token" in result.output
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = CliRunner().invoke(cli, ["serve", str(trained), "--token-file", str(empty)])
    assert result.exit_code == 2 and "--token-file" in result.output
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--port", "8"])
    assert result.exit_code == 2 and "not an s3t run" in result.output


@pytest.mark.parametrize("flag, value", [("--workers", "-1"), ("--torch-threads", "-2"),
                                         ("--max-batch", "0"), ("--max-wait-ms", "-1")])
def test_serve_refuses_bad_throughput_flags(trained, flag, value):
    result = CliRunner().invoke(cli, ["serve", str(trained), flag, value])
    assert result.exit_code == 2 and flag in result.output and "must be " in result.output


# --- a real server, killed and restarted ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def start_server(run: Path, port: int, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "S3T_API_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "s3t.cli", "serve", str(run), "--host",
                                 "127.0.0.1", "--port", str(port), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start in 90 s: {log.read_text()[-2000:]}")


def test_real_server_keeps_an_acknowledged_deletion_across_kill_9(run_copy, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    victim = samples_in(run_copy, (1, 0))[0]
    proc = start_server(run_copy, port, log)
    try:
        predicted = httpx.post(f"{base}/v1/predict", json={"inputs": ["red cat"]}, headers=AUTH,
                               timeout=30)
        assert predicted.status_code == 200 and len(predicted.json()["routes"]) == 2
        deleted = httpx.post(f"{base}/v1/deletions", json={"sample_ids": [victim],
                             "request_id": "kill-9"}, headers=AUTH, timeout=30)
        assert deleted.status_code == 200, deleted.text
        certificate = deleted.json()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc = start_server(run_copy, port, log)
    try:
        again = httpx.get(f"{base}/v1/deletions/kill-9", headers=AUTH, timeout=30)
        assert again.status_code == 200
        assert {k: again.json()[k] for k in ("request_id", "samples", "erased_stages")} == \
            {k: certificate[k] for k in ("request_id", "samples", "erased_stages")}
        routes = httpx.post(f"{base}/v1/predict", json={"inputs": ["red cat"]}, headers=AUTH,
                            timeout=30).json()["routes"]
        assert not set(certificate["erased_stages"]) & set(routes.values())
    finally:
        stop_server(proc)
    assert TOKEN not in log.read_text()
    result = CliRunner().invoke(cli, ["audit", str(run_copy), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True
