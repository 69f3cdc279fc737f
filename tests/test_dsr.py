"""Standard deletion requests (``POST /v1/dsr``): an OpenDSR-shaped erasure moves through
received, exact, erased and restored in the ledger; each state change is POSTed, signed, to
the status callback URLs, at least once, across a receiver that is killed and restarted and
across a server restart; replays (a re-sent request with other content is refused and changes
nothing), rejections, limits, and the hosts callbacks may go to (--callback-allow)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from live import free_port, live_server
from test_cli_engine import invoke, write_csv
from tiny import copy_run, toy_dataset

from s3t.client import AsyncClient, Client, ServiceError
from s3t.contract import SubjectCallback, SubjectRequestStatus
from s3t.run import Run
from s3t.run.signing import ENV, load_signer, new_key, parse_public
from s3t.run.subject import (
    SubjectOpening,
    expected_completion,
    next_states,
    request_status,
    restore_targets,
)
from s3t.service import create_app
from s3t.service.callback_hosts import allowed, parse_entry

TOKEN = "dsr-token"
SECRET = "a-shared-callback-secret-of-some-length"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBMITTED = "2026-12-06T10:00:00Z"


class Receiver:
    """A status-callback receiver on 127.0.0.1:``port`` that can be killed and restarted."""

    def __init__(self, port: int):
        self.port, self.url = port, f"http://127.0.0.1:{port}/hook"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def kill(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def states(self) -> list[str]:
        return [json.loads(body)["state"] for _, body in self.received]

    def wait_for(self, states: set[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not states <= set(self.states()):
            assert time.monotonic() < deadline, f"callbacks seen: {self.states()}"
            time.sleep(0.05)


def retained(run, n: int, shard: int = 0) -> list[str]:
    ledger = Run.open(run, repair=False).ledger
    try:
        return [r[0] for r in ledger.conn.execute(
            "SELECT sample_id FROM samples WHERE shard = ? AND deleted_version IS NULL "
            "ORDER BY sample_id LIMIT ?", (shard, n))]
    finally:
        ledger.close()


def erasure(subject: str, ids: list[str], urls: list[str] = (), groups: list[str] = ()) -> dict:
    return {"subject_request_id": subject, "submitted_time": SUBMITTED,
            "subject_identities": [{"identity_type": "sample_id", "identity_value": i}
                                   for i in ids] +
                                  [{"identity_type": "group", "identity_value": g}
                                   for g in groups],
            "status_callback_urls": list(urls)}


def wait_status(url: str, subject: str, done, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/dsr/{subject}", headers=AUTH).json()
        if done(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def hmac_ok(headers: dict[str, str], body: bytes) -> bool:
    message = headers["s3t-timestamp"].encode() + b"." + body
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["s3t-signature"], "hmac-sha256=" + expected)


def test_an_erasure_moves_through_its_states_and_every_callback_arrives_across_restarts(
        trained, tmp_path):
    run = copy_run(trained, tmp_path)
    receiver = Receiver(free_port())  # not listening yet: the first tries fail
    victims = retained(run, 2)
    app = create_app(run, token=TOKEN, callback_secret=SECRET, callback_backoff_s=0.1,
                     callback_attempts=50, retrain="eager", retrain_delay_s=3600,
                     callback_allow=("127.0.0.1",))
    with live_server(app) as url, Client(url, token=TOKEN) as s3t:
        status = s3t.erase("dsr-1", sample_ids=victims, submitted_time=SUBMITTED,
                           callback_urls=[receiver.url])
        assert isinstance(status, SubjectRequestStatus)
        assert status.state == "erased" and status.request_status == "in_progress"
        assert [t.state for t in status.transitions] == ["received", "exact", "erased"]
        assert status.samples == 2 and status.submitted_time == SUBMITTED
        certificate = s3t.deletion(status.deletion_request_id)
        assert certificate.samples == sorted(victims) and certificate.erased_stages
        # eager, with a one-hour delay: restored after the delay and the measured stages
        expected = datetime.fromisoformat(status.expected_completion_time)
        received = datetime.fromisoformat(status.received_time)
        assert expected >= received + timedelta(seconds=3599)
        assert s3t.subject_request("dsr-1").callbacks_pending >= 1  # nobody listens yet

        receiver.start()  # the receiver comes up: the three queued states arrive
        receiver.wait_for({"received", "exact", "erased"})
        receiver.kill()   # and goes away before capacity is restored
        s3t.retrain()
        restored = wait_status(url, "dsr-1", lambda s: s["state"] == "restored")
        assert restored["request_status"] == "completed"
        assert restored["callbacks_pending"] == 1 and restored["callbacks_failed"] == 0
        assert "restored" not in receiver.states()
        time.sleep(0.5)  # a try or two fail meanwhile
        receiver.start()
        receiver.wait_for({"restored"})
        wait_status(url, "dsr-1", lambda s: s["callbacks_pending"] == 0, timeout=30)
    receiver.kill()
    assert set(receiver.states()) == {"received", "exact", "erased", "restored"}
    for headers, body in receiver.received:
        assert hmac_ok(headers, body), headers
        callback = SubjectCallback.model_validate_json(body)
        assert callback.subject_request_id == "dsr-1" and callback.delivery_id
        assert not hmac_ok({**headers, "s3t-timestamp": "1"}, body)  # the time is signed
    last = SubjectCallback.model_validate_json(receiver.received[-1][1])
    assert last.state == "restored" and last.request_status == "completed"
    assert [t["state"] for t in restored["transitions"]] == [
        "received", "exact", "erased", "restored"]


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """A server without a callback secret (an unsigned run), manual retraining."""
    run = copy_run(trained, tmp_path_factory.mktemp("dsr"))
    with live_server(create_app(run, token=TOKEN, max_ids=5, max_body_bytes=4000)) as url:
        yield url, run


def test_a_replay_is_answered_with_the_same_request_and_a_rejection_changes_nothing(served):
    url, run = served
    victims = retained(run, 2, shard=1)
    first = httpx.post(f"{url}/v1/dsr", json=erasure("subject-7", victims), headers=AUTH)
    assert first.status_code == 200 and first.headers["S3T-Replayed"] == "false"
    status = first.json()
    # manual policy: nothing will restore it, so it is completed once erased
    assert status["state"] == "erased" and status["request_status"] == "completed"
    assert status["expected_completion_time"] is not None
    again = httpx.post(f"{url}/v1/dsr", json=erasure("subject-7", victims[::-1]), headers=AUTH)
    assert again.status_code == 200 and again.headers["S3T-Replayed"] == "true"
    assert again.json()["deletion_request_id"] == status["deletion_request_id"]
    assert again.json()["transitions"] == status["transitions"]
    other = httpx.post(f"{url}/v1/dsr", json=erasure("subject-7", victims[:1]), headers=AUTH)
    assert other.status_code == 409 and "request_id" in other.json()["message"]
    # the subject request id is the deletion's key: the one replay rule answers both routes
    plain = httpx.get(f"{url}/v1/deletions/subject-7", headers=AUTH).json()
    assert plain["request_id"] == status["deletion_request_id"]

    before = httpx.get(f"{url}/v1/status", headers=AUTH).json()
    for body, code, words in (
            (erasure("subject-8", ["no-such-sample"]), 404, "unknown sample ids"),
            (erasure("subject-9", retained(run, 1), urls=["http://127.0.0.1:9/hook"]), 400,
             "--callback-secret-file"),
            (erasure("subject-10", [f"x{i}" for i in range(6)]), 413, "--max-ids"),
            ({**erasure("subject-11", retained(run, 1)), "submitted_time": "yesterday at noon"}, 422,
             "ISO 8601"),
            (erasure("subject-12", [f"{i:0200d}" for i in range(30)]), 413, "fewer ids")):
        answer = httpx.post(f"{url}/v1/dsr", json=body, headers=AUTH)
        assert answer.status_code == code and words in answer.json()["message"], answer.text
        assert httpx.get(f"{url}/v1/dsr/{body['subject_request_id']}",
                         headers=AUTH).status_code == 404
    after = httpx.get(f"{url}/v1/status", headers=AUTH).json()
    assert (after["deleted"], after["deletion_requests"]) == (before["deleted"],
                                                              before["deletion_requests"])
    too_many = httpx.post(f"{url}/v1/deletions", json={"sample_ids": [f"x{i}" for i in range(6)]},
                          headers=AUTH)
    assert too_many.status_code == 413 and "6 ids" in too_many.json()["message"]
    assert httpx.get(f"{url}/v1/dsr/subject-7").status_code == 401  # the token's


def test_group_identities_and_the_client_s_errors(served):
    url, run = served
    ledger = Run.open(run, repair=False).ledger
    try:  # a group's key is not stored; the toy data's groups are "user<i>"
        members = ledger.group_members(["user1"])["user1"]
    finally:
        ledger.close()
    with Client(url, token=TOKEN) as s3t:
        status = s3t.erase("subject-group", groups=["user1"])
        assert status.samples == len(members) > 0
        assert s3t.subject_request("subject-group") == status
        with pytest.raises(ServiceError) as missing:
            s3t.subject_request("nobody")
        assert missing.value.status == 404
        with pytest.raises(ValueError):
            s3t.erase("empty")

    async def from_asyncio() -> SubjectRequestStatus:
        async with AsyncClient(url, token=TOKEN) as client:
            return await client.subject_request("subject-group")

    assert asyncio.run(from_asyncio()) == status


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("signed-dsr")
    new_key(root / "run.key")
    result = invoke("train", "--data", write_csv(root / "train.csv", toy_dataset(24)), "--out",
                    root / "run", "--model", tiny_bert, "--shards", 2, "--slices", 2, "--budget", 1,
                    "--epochs", 1, "--batch-size", 8, "--lora-r", 2, "--lora-alpha", 4,
                    "--signing-key", root / "run.key")
    assert result.exit_code == 0, result.output
    return root / "run", root / "run.key"


def test_a_restarted_server_delivers_what_was_pending_signed_with_the_run_s_key(
        signed, monkeypatch):
    run, key = signed
    monkeypatch.setenv(ENV, str(key))
    receiver = Receiver(free_port())
    victim = retained(run, 1)
    with live_server(create_app(run, token=TOKEN, callback_backoff_s=5,
                                       callback_allow=[f"127.0.0.1:{receiver.port}"])) as url:
        status = httpx.post(f"{url}/v1/dsr", json=erasure("signed-1", victim, [receiver.url]),
                            headers=AUTH).json()
        assert status["state"] == "erased", status
    # the server stopped with the callbacks undelivered; the next one sends them
    receiver.start()
    with live_server(create_app(run, token=TOKEN, callback_backoff_s=5,
                                       callback_allow=[f"127.0.0.1:{receiver.port}"])) as url:
        receiver.wait_for({"received", "exact", "erased"})
        wait_status(url, "signed-1", lambda s: s["callbacks_pending"] == 0, timeout=30)
        public = httpx.get(f"{url}/v1/keys").json()["signing_key"]
    receiver.kill()
    assert public == load_signer(key).public
    for headers, body in receiver.received:
        scheme, signature = headers["s3t-signature"].split("=", 1)
        assert scheme == "ed25519"
        parse_public(public).verify(bytes.fromhex(signature),
                                    headers["s3t-timestamp"].encode() + b"." + body)


def test_the_states_are_written_with_the_deletion_or_not_at_all(trained, tmp_path):
    """A crash just before the deletion's commit leaves no trace of the request; one just
    after it leaves it durable, exact, with its callbacks queued."""
    for point, recorded in (("forget:before-commit", False), ("forget:after-commit", True)):
        run = copy_run(trained, tmp_path / point.replace(":", "-"))
        victim = retained(run, 1)
        code = ("import sys; from s3t.run import Run; from s3t.run.subject import "
                "SubjectOpening as S; Run.open(sys.argv[1]).forget(sample_ids=[sys.argv[2]], "
                "client_key='crash', subject=S('crash', '2026-01-01T00:00:00Z', "
                "'2026-01-01T00:00:01Z', ('http://127.0.0.1:9/',)))")
        done = subprocess.run([sys.executable, "-c", code, str(run), victim[0]],
                              env={**os.environ, "S3T_FAULT": point}, capture_output=True,
                              timeout=120)
        assert done.returncode == 86, done.stderr
        ledger = Run.open(run, repair=False).ledger
        try:
            found = ledger.subject_request("crash")
            assert (found is not None) == recorded
            if recorded:
                assert found["state"] == "exact" and found["callbacks_pending"] == 2
                assert list(ledger.certificate(found["request_id"]).samples) == victim
        finally:
            ledger.close()


def test_the_state_rules():
    depths = {"a": 2, "b": 1, "c": 2}
    targets = restore_targets({"0": "a", "1": "c"}, {"0": "b", "1": "c"}, depths)
    assert targets == {"0": 2}
    assert next_states("exact", False, targets, {"0": 1}) == []
    assert next_states("exact", True, targets, {"0": 1}) == ["erased"]
    assert next_states("exact", True, targets, {"0": 2}) == ["erased", "restored"]
    assert next_states("erased", True, {}, {}) == ["restored"]
    assert [request_status(s, True) for s in ("received", "exact", "erased", "restored")] == [
        "pending", "in_progress", "in_progress", "completed"]
    assert request_status("erased", False) == "completed"
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seen = {"received": "2026-01-01T00:00:00+00:00", "exact": "2026-01-01T00:00:00+00:00"}
    assert expected_completion("exact", seen, False, 3, 10.0, 0, None, now) is None
    assert expected_completion("exact", seen, True, 3, 10.0, 60, None, now) == \
        "2026-01-01T00:01:30+00:00"
    assert expected_completion("exact", seen, True, 3, 10.0, 60, 5.0, now) == \
        "2026-01-01T00:00:05+00:00"
    assert expected_completion("exact", seen, True, 3, None, 60, None, now) is None
    assert SubjectOpening("s", SUBMITTED, SUBMITTED).callback_urls == ()


@pytest.fixture(scope="module")
def hooked(trained, tmp_path_factory):
    """A server that signs callbacks (a shared secret) and may send them to 127.0.0.1 only;
    nobody listens on the callback URLs below, and a failed try waits 60 s."""
    run = copy_run(trained, tmp_path_factory.mktemp("hooked"))
    with live_server(create_app(run, token=TOKEN, callback_secret=SECRET, callback_backoff_s=60,
                                callback_allow=("127.0.0.1",))) as url:
        yield url, run


def test_a_replay_with_other_content_is_refused_naming_what_differs_and_changes_nothing(hooked):
    url, run = hooked
    victims = retained(run, 3, shard=0)
    hook, other_hook = "http://127.0.0.1:9/a", "http://127.0.0.1:9/b"
    first = httpx.post(f"{url}/v1/dsr", json=erasure("changed", victims[:2], [hook, other_hook]),
                       headers=AUTH)
    assert first.status_code == 200 and first.headers["S3T-Replayed"] == "false", first.text
    recorded = first.json()
    # the same content in another order, a URL named twice: a replay, answered as before
    again = httpx.post(f"{url}/v1/dsr", json=erasure("changed", victims[1::-1],
                                                     [other_hook, hook, hook]), headers=AUTH)
    assert again.status_code == 200 and again.headers["S3T-Replayed"] == "true", again.text
    assert again.json()["deletion_request_id"] == recorded["deletion_request_id"]
    assert again.json()["transitions"] == recorded["transitions"]
    before = httpx.get(f"{url}/v1/status", headers=AUTH).json()
    for urls, ids, differ in (
            ([hook], victims[:2], ["status_callback_urls"]),
            ([hook, other_hook, "http://127.0.0.1:9/c"], victims[:2], ["status_callback_urls"]),
            ([hook, other_hook], victims[:1], ["subject_identities"]),
            ([hook, other_hook], victims, ["subject_identities"]),
            ([], victims[2:], ["subject_identities", "status_callback_urls"])):
        answer = httpx.post(f"{url}/v1/dsr", json=erasure("changed", ids, urls), headers=AUTH)
        assert answer.status_code == 409, answer.text
        message = answer.json()["message"]
        assert answer.json()["error"] == "conflict"
        assert message.startswith("subject_request_id 'changed' was already received with "
                                  "other "), message
        assert "nothing was changed" in message and "GET /v1/dsr/changed" in message
        for field in ("subject_identities", "status_callback_urls"):
            assert (field in message) == (field in differ), message
    status = httpx.get(f"{url}/v1/dsr/changed", headers=AUTH).json()
    assert sorted(status["status_callback_urls"]) == [hook, other_hook]
    assert status["transitions"] == recorded["transitions"] and status["samples"] == 2
    assert status["callbacks_pending"] + status["callbacks_failed"] == 6  # 3 states x 2 URLs
    after = httpx.get(f"{url}/v1/status", headers=AUTH).json()
    assert (after["deleted"], after["deletion_requests"]) == (before["deleted"],
                                                              before["deletion_requests"])
    assert victims[2] in retained(run, 100, shard=0)  # the third sample was not deleted
    # the run's erasure requests by state, as /metrics and /v1/status count them
    metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    for state, count in (("received", 0), ("exact", 0), ("erased", 1), ("restored", 0)):
        assert f's3t_erasure_requests{{state="{state}"}} {count:.1f}' in metrics, metrics
    assert "s3t_erasure_callbacks_pending 6.0" in metrics
    assert after["erasures"] == {"received": 0, "exact": 0, "erased": 1, "restored": 0,
                                 "callbacks_pending": 6, "callbacks_failed": 0}

    # a plain deletion's request id is a subject request id too: other samples are refused
    plain = httpx.post(f"{url}/v1/deletions", json={"sample_ids": victims[2:],
                                                     "request_id": "plain-7"}, headers=AUTH)
    assert plain.status_code == 200, plain.text
    other = httpx.post(f"{url}/v1/dsr", json=erasure("plain-7", retained(run, 1, shard=1)),
                       headers=AUTH)
    assert other.status_code == 409 and "subject_request_id 'plain-7'" in \
        other.json()["message"] and "subject_identities" in other.json()["message"]
    assert httpx.get(f"{url}/v1/dsr/plain-7", headers=AUTH).status_code == 404


def test_callback_urls_on_hosts_the_server_does_not_allow_are_refused(hooked):
    url, run = hooked
    victim = retained(run, 1, shard=1)
    before = httpx.get(f"{url}/v1/status", headers=AUTH).json()
    for n, hook in enumerate(("http://localhost:9/h", "http://127.0.0.2/h",
                              "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/h",
                              "http://[::1]:9/h", "https://hooks.example.com/h",
                              "http://2130706433/h")):
        body = erasure(f"ssrf-{n}", victim, ["http://127.0.0.1:9/ok", hook])
        answer = httpx.post(f"{url}/v1/dsr", json=body, headers=AUTH)
        assert answer.status_code == 400, (hook, answer.text)
        message = answer.json()["message"]
        assert "--callback-allow" in message and "127.0.0.1:9/ok" not in message, message
        assert message.endswith("nothing was deleted")
        assert httpx.get(f"{url}/v1/dsr/ssrf-{n}", headers=AUTH).status_code == 404
    after = httpx.get(f"{url}/v1/status", headers=AUTH).json()
    assert (after["deleted"], after["deletion_requests"]) == (before["deleted"],
                                                              before["deletion_requests"])


def test_a_callback_queued_for_a_host_no_longer_allowed_is_given_up_unsent(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    receiver = Receiver(free_port())  # down while the first server tries
    victim = retained(run, 1)
    with live_server(create_app(run, token=TOKEN, callback_secret=SECRET, callback_backoff_s=0.05,
                                callback_allow=("127.0.0.1",))) as url:
        status = httpx.post(f"{url}/v1/dsr", json=erasure("moved", victim, [receiver.url]),
                            headers=AUTH).json()
        assert status["callbacks_pending"] == 3, status
    receiver.start()  # now it listens, but the next server allows only another host
    try:
        with live_server(create_app(run, token=TOKEN, callback_secret=SECRET,
                                    callback_allow=("hooks.example.com",))) as url:
            status = wait_status(url, "moved", lambda s: s["callbacks_failed"] == 3, timeout=30)
            assert status["callbacks_pending"] == 0
            metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
            assert "s3t_erasure_callbacks_failed 3.0" in metrics
    finally:
        receiver.kill()
    assert receiver.received == []


def test_the_callback_allow_list_rules():
    allow = ("hooks.example.com", "127.0.0.1:8443", "*.dpo.example", "[::1]:9", "Upper.Example.")
    assert allowed("https://hooks.example.com/h", allow)
    assert allowed("http://HOOKS.example.com:8080/h", allow)  # a host without a port: any port
    assert allowed("https://127.0.0.1:8443/h", allow)
    assert not allowed("http://127.0.0.1/h", allow) and not allowed("http://127.0.0.1:8444/", allow)
    assert allowed("https://a.b.dpo.example/h", allow) and not allowed("https://dpo.example/", allow)
    assert not allowed("https://evil-dpo.example/h", allow)
    assert allowed("http://[0:0::1]:9/h", allow) and not allowed("http://[::1]:10/h", allow)
    assert allowed("http://upper.example/h", allow)
    assert not allowed("http://hooks.example.com.evil.test/h", allow)
    assert not allowed("http://hooks.example.com@10.0.0.1/h", allow)  # the host is 10.0.0.1
    assert not allowed("http://localhost:8443/h", allow) and not allowed("http://x/", ())
    assert parse_entry("[::1]:9")[1] == 9
    for bad in ("", "a/b", "https://a", "*.", "a.*.b", "user@a", "a:99999"):
        with pytest.raises(ValueError):
            parse_entry(bad)
