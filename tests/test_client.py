"""`s3t.client` against a live server on 127.0.0.1 (a prediction, deletions, a retrain, a
retry after a dropped connection), and its retry and error rules on a mock transport."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
from live import DroppingProxy, free_port, live_server
from tiny import copy_run

from s3t.client import AsyncClient, Client, ConnectionFailed, ServiceError, Unavailable
from s3t.contract import Certificate, Job, PredictResponse, Status
from s3t.run import Run
from s3t.service import create_app

TOKEN = "client-token"


def retained(run, cell: tuple[int, int], n: int) -> list[str]:
    ledger = Run.open(run, repair=False).ledger
    try:
        rows = ledger.conn.execute("SELECT sample_id FROM samples WHERE shard = ? AND slice = ? "
                                   "AND deleted_version IS NULL ORDER BY sample_id", cell)
        return [r[0] for r in rows.fetchall()[:n]]
    finally:
        ledger.close()


def deletion_count(run) -> int:
    ledger = Run.open(run, repair=False).ledger
    try:
        return ledger.deletion_count()
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """A live server on a copy of the shared run: (base URL, run directory)."""
    run = copy_run(trained, tmp_path_factory.mktemp("client"))
    with live_server(create_app(run, token=TOKEN, max_inputs=8)) as url:
        yield url, run


def test_the_client_predicts_deletes_and_retrains(server):
    url, run = server
    with Client(url, token=TOKEN) as s3t:
        labels = s3t.labels().labels
        prediction = s3t.predict(["red cat dog", "blue fish sun"])
        assert isinstance(prediction, PredictResponse) and prediction.live_shards == 2
        for label, row in zip(prediction.labels, prediction.probabilities, strict=True):
            assert len(row) == len(labels) and labels[row.index(max(row))] == label
        victim = retained(run, (0, 0), 1)
        certificate = s3t.delete(sample_ids=victim, request_id="ticket-1")
        assert isinstance(certificate, Certificate) and certificate.samples == victim
        assert certificate.erased_stages and certificate.files_erased is True
        assert s3t.deletion("ticket-1") == s3t.deletion(certificate.request_id) == certificate
        status = s3t.status()
        assert isinstance(status, Status) and status.capacity < 1 and status.deleted == 1
        served = s3t.predict(["red cat dog"]).routes.values()
        assert not set(certificate.erased_stages) & set(served)

        job = s3t.retrain()
        assert isinstance(job, Job) and job.trigger == "manual" and job.active
        restored = s3t.wait_for_capacity(timeout=240, poll_s=0.5)
        assert restored.capacity == 1.0 and restored.retrain.job.state == "succeeded"
        assert s3t.job(job.id).stages_done == len(certificate.erased_stages)
        assert s3t.audit().ok

        with pytest.raises(ServiceError) as missing:
            s3t.deletion("no such ticket")
        assert missing.value.status == 404 and "no such ticket" in missing.value.message
        with pytest.raises(ServiceError) as invalid:
            s3t.delete(sample_ids=[])
        assert invalid.value.status == 400 and invalid.value.error == "bad_request"
    with Client(url, token="wrong") as intruder, pytest.raises(ServiceError) as denied:
        intruder.predict(["red"])
    assert denied.value.status == 401 and "invalid bearer token" in str(denied.value)


def test_a_retry_after_a_dropped_connection_does_not_delete_twice(server):
    """The first try's answer is lost after the server committed the deletion; the retry,
    with the same request id, gets the original certificate. The request names a sample an
    earlier request deleted, so only the request id tells the server it is a retry (by
    samples alone it would be a new, empty deletion in the chain)."""
    url, run = server
    earlier, new = retained(run, (1, 1), 2)
    with Client(url, token=TOKEN) as direct:
        direct.delete(sample_ids=[earlier])
    before = deletion_count(run)
    proxy = DroppingProxy(int(url.rsplit(":", 1)[1]))
    try:
        with Client(proxy.url, token=TOKEN, backoff_s=0.05) as s3t:
            certificate = s3t.delete(sample_ids=[earlier, new])
            assert proxy.dropped == 1
            assert certificate.samples == [new] and certificate.already_deleted == [earlier]
            assert deletion_count(run) == before + 1
            page = httpx.get(f"{url}/v1/deletions", params={"limit": 1000},
                             headers={"Authorization": f"Bearer {TOKEN}"}).json()
            assert page["certificates"][-1]["request_id"] == certificate.request_id
    finally:
        proxy.close()
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(nobody, token=TOKEN, retries=1, backoff_s=0.01) as gone, \
            pytest.raises(ConnectionFailed):
        gone.status()


def test_the_async_client(server):
    url, _ = server

    async def main() -> tuple[PredictResponse, Status]:
        async with AsyncClient(url, token=TOKEN) as s3t:
            prediction, status = await asyncio.gather(s3t.predict(["green tree"]), s3t.status())
            with pytest.raises(ServiceError) as missing:
                await s3t.job("retrain-0-0")
            assert missing.value.status == 404
            return prediction, status

    prediction, status = asyncio.run(main())
    assert len(prediction.probabilities) == 1 and status.shards == 2


# --- retries and errors, on a mock transport ----------------------------------------------------

STATUS = {"shards": 2, "slices": 2, "budget": 2, "strategy": "cyclic", "method": "s3t",
          "live_shards": 2, "routes": {"0": {"stage": "k", "depth": 2}, "1": None},
          "samples": 48, "deleted": 0, "live_stages": 8, "erased_stages": 0, "capacity": 0.5,
          "deletion_requests": 0, "training": "idle"}


def replies(*answers: httpx.Response | Exception):
    """A transport that gives ``answers`` in order, and the requests it received."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def test_transient_failures_are_retried_with_the_same_request_id():
    certificate = {"request_id": "r1", "time": "t", "samples": ["a"], "erased_stages": [],
                   "routes_before": {}, "routes_after": {}, "live_shards": 2}
    transport, seen = replies(httpx.ConnectError("refused"), httpx.RemoteProtocolError("dropped"),
                              httpx.Response(503, headers={"Retry-After": "0"},
                                             json={"error": "unavailable", "message": "busy"}),
                              httpx.Response(200, json=certificate))
    with Client("http://s3t", token="t", transport=transport, backoff_s=0) as s3t:
        assert s3t.delete(sample_ids=["a"]).request_id == "r1"
    keys = {json.loads(r.content)["request_id"] for r in seen}
    assert len(seen) == 4 and len(keys) == 1 and keys.pop().startswith("client-")
    assert all(r.headers["authorization"] == "Bearer t" for r in seen)


def test_final_answers_are_not_retried_and_errors_carry_the_server_message():
    transport, seen = replies(httpx.Response(503, json={"error": "unavailable",
                                                        "message": "no live shard"}))
    with Client("http://s3t", transport=transport) as s3t, pytest.raises(Unavailable) as busy:
        s3t.status()
    assert len(seen) == 1 and busy.value.message == "no live shard"
    detail = [{"type": "missing", "loc": ["body", "inputs"], "msg": "Field required"}]
    transport, seen = replies(httpx.Response(422, json={"error": "invalid_request",
                                                        "message": "invalid request: inputs",
                                                        "detail": detail}))
    with Client("http://s3t", transport=transport) as s3t, pytest.raises(ServiceError) as bad:
        s3t.predict(["x"])
    assert (bad.value.status, bad.value.detail, len(seen)) == (422, detail, 1)
    transport, seen = replies(*[httpx.ConnectError("refused")] * 3)
    with Client("http://s3t", transport=transport, retries=2, backoff_s=0) as s3t, \
            pytest.raises(ConnectionFailed):
        s3t.status()
    assert len(seen) == 3


def test_wait_for_capacity_gives_up_at_its_timeout():
    transport, _ = replies(*[httpx.Response(200, json=STATUS)] * 100)
    with Client("http://s3t", transport=transport) as s3t, pytest.raises(TimeoutError) as late:
        s3t.wait_for_capacity(timeout=0.2, poll_s=0.05)
    assert "capacity 0.500 has not reached 1" in str(late.value)
    full = {**STATUS, "capacity": 1.0}
    transport, seen = replies(httpx.Response(200, json=STATUS), httpx.Response(200, json=full))
    with Client("http://s3t", transport=transport) as s3t:
        assert s3t.wait_for_capacity(timeout=5, poll_s=0.01).capacity == 1.0
    assert len(seen) == 2


def test_the_client_imports_no_model_and_no_web_server():
    code = ("import sys, s3t.client; heavy = {'torch', 'fastapi', 'starlette', 'numpy', "
            "'s3t.service', 's3t.engine'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
