"""Observability of `s3t serve`: request ids in every log line of a request, JSON logs,
metrics and history derived from the run's ledger (two servers on one run agree), the
documentation pages from installed files (offline, also in headless Chromium), and a busy
port refused before the model loads."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from html.parser import HTMLParser

import pytest
from test_service import (
    AUTH,
    TOKEN,
    free_port,
    samples_in,
    serving,
    start_server,
    stop_server,
)
from typer.testing import CliRunner

from s3t.cli import app as cli
from s3t.service.logs import JsonFormatter, RequestIdFilter, TextFormatter, log_config

RID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def served(trained):
    """A server on the shared run, for tests that delete nothing."""
    with serving(trained) as client:
        yield client


@contextmanager
def captured_log(formatter: logging.Formatter):
    """The ``s3t`` loggers' lines, formatted as the server's handler formats them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("s3t")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_every_log_line_of_a_deletion_carries_its_request_id(run_copy):
    victim = samples_in(run_copy, (0, 0))[0]
    with serving(run_copy) as client:
        client.get("/v1/status")  # before: lines of other requests
        with captured_log(JsonFormatter()) as out:
            response = client.post("/v1/deletions", json={"sample_ids": [victim]},
                                   headers={**AUTH, "X-Request-ID": "erase-user-17"})
            client.app.state.service.history.changed()
        assert response.status_code == 200 and response.headers["x-request-id"] == "erase-user-17"
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        certificate = response.json()
    mine = [line for line in lines if line["request_id"] == "erase-user-17"]
    assert lines and mine == lines, lines  # every line made while it was handled
    deletion = [line for line in mine if line.get("deletion") == certificate["request_id"]]
    assert len(deletion) == 1 and deletion[0]["samples"] == 1 and deletion[0]["committed"]
    assert deletion[0]["erased_stages"] == len(certificate["erased_stages"])
    access = [line for line in mine if line["logger"] == "s3t.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", "/v1/deletions", 200)]
    assert victim not in out.getvalue() and TOKEN not in out.getvalue()


def test_the_certificate_carries_the_client_request_id_and_the_x_request_id(run_copy):
    """Both ids are in the certificate, inside its chain link; a replay answers with the
    original; a deletion without them (in process) has neither field, so certificates
    issued before keep their digest and the chain of an existing run still verifies."""
    from s3t.run import Run
    from s3t.run.chain import certificate_sha256

    first, second, third = samples_in(run_copy, (1, 0), 3)
    with serving(run_copy) as client:
        made = client.post("/v1/deletions", json={"sample_ids": [first]}, headers=AUTH).json()
        keyed = client.post("/v1/deletions", json={"sample_ids": [second],
                                                   "request_id": "ticket-4711"},
                            headers={**AUTH, "X-Request-ID": "erase-user-18"}).json()
        again = client.post("/v1/deletions", json={"sample_ids": [second],
                                                   "request_id": "ticket-4711"},
                            headers={**AUTH, "X-Request-ID": "retry-1"})
        by_key = client.get("/v1/deletions/ticket-4711", headers=AUTH).json()
    assert RID.fullmatch(made["x_request_id"]) and "client_request_id" not in made
    assert keyed["client_request_id"] == "ticket-4711"
    assert keyed["x_request_id"] == "erase-user-18"
    assert again.headers["s3t-replayed"] == "true"
    assert again.json()["x_request_id"] == "erase-user-18" == by_key["x_request_id"]
    run = Run.open(run_copy)
    try:
        _, plain = run.forget(sample_ids=[third])
        assert "client_request_id" not in plain and "x_request_id" not in plain
        stored = run.ledger.certificate(keyed["request_id"]).to_dict()
        assert run.audit().ok
        edited = dict(stored, client_request_id="ticket-4712")
        assert certificate_sha256(edited) != certificate_sha256(stored)  # inside the link
    finally:
        run.close()


def test_request_ids_are_taken_or_made_and_echoed_on_every_response(trained):
    with serving(trained) as client, captured_log(TextFormatter()) as out:
        made = client.get("/healthz").headers["x-request-id"]
        refused = client.post("/v1/deletions", json={}, headers={"X-Request-ID": "abc.1:2-3"})
        odd = client.get("/v1/status", headers={"X-Request-ID": "has spaces & more"})
        assert RID.fullmatch(made) and RID.fullmatch(odd.headers["x-request-id"])
        assert refused.status_code == 401 and refused.headers["x-request-id"] == "abc.1:2-3"
    text = out.getvalue()
    assert f"[{made}] s3t.access:" in text and "[abc.1:2-3] s3t.access:" in text
    assert "POST /v1/deletions 401" in text


def test_log_config_writes_json_lines_with_the_request_id():
    import logging.config

    logging.config.dictConfig(log_config("json", "info"))
    try:
        handler = logging.getLogger("s3t").handlers[0]
        stream = io.StringIO()
        handler.setStream(stream)
        logging.getLogger("s3t.service").info("hello %s", "there", extra={"count": 3})
        line = json.loads(stream.getvalue())
        assert line["message"] == "hello there" and line["count"] == 3
        assert line["request_id"] == "-" and line["level"] == "info"
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "loggers": {"s3t": {"handlers": [], "propagate": True,
                                                       "level": "NOTSET"}}})
    for bad in (("xml", "info"), ("json", "loud")):
        with pytest.raises(ValueError, match="unknown log"):
            log_config(*bad)


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, name
    return float(found.group(1))


def test_two_servers_on_one_run_report_the_same_totals_and_history(run_copy):
    victims = samples_in(run_copy, (1, 1), 2)
    with serving(run_copy) as first, serving(run_copy) as second:
        for victim in victims:
            assert first.post("/v1/deletions", json={"sample_ids": [victim]},
                              headers=AUTH).status_code == 200
        texts = [client.get("/metrics").text for client in (first, second)]
        histories = [client.get("/v1/history").json() for client in (first, second)]
    for name in ("s3t_deletions_total", "s3t_deleted_samples_total", "s3t_stages_trained_total",
                 "s3t_stages_erased_total", "s3t_stages_retrained_total", "s3t_live_stages",
                 "s3t_capacity"):
        assert metric(texts[0], name) == metric(texts[1], name), name
    assert metric(texts[1], "s3t_deletions_total") == 2.0
    assert metric(texts[1], "s3t_deleted_samples_total") == 2.0
    assert metric(texts[1], "s3t_stages_trained_total") == 8.0
    assert metric(texts[1], "s3t_stages_erased_total") >= 1.0
    assert histories[0]["points"] == histories[1]["points"]
    deletions = [p for p in histories[1]["points"] if p["event"] == "deletion"]
    assert [(p["deletion_requests"], p["deleted"]) for p in deletions] == [(1, 1), (2, 2)]
    assert deletions[-1]["capacity"] == metric(texts[1], "s3t_capacity") < 1


def test_metrics_cover_model_calls_queue_in_flight_process_and_build(served):
    assert served.post("/v1/predict", json={"inputs": ["red", "blue sun"]},
                       headers=AUTH).status_code == 200
    text = served.get("/metrics").text
    for name in ('s3t_model_call_seconds_count{call="predict"}', "s3t_predict_queue_requests 0.0",
                 "s3t_http_requests_in_flight 1.0", "s3t_predict_batch_inputs_bucket",
                 "process_cpu_seconds_total", "process_resident_memory_bytes",
                 "s3t_deletions_total", "s3t_stages_retrained_total"):
        assert name in text, name
    info = re.search(r"^s3t_build_info\{(.*)\} 1\.0$", text, re.M)
    assert info and 'torch_version="' in info.group(1) and 'version="' in info.group(1)
    assert metric(text, 's3t_model_call_seconds_count{call="predict"}') >= 1


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_assets_served_by_the_server(served, page):
    response = served.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    links = Links()
    links.feed(response.text)
    assert links.urls and all(u.startswith("/") and not u.startswith("//") for u in links.urls)
    assert "http://" not in response.text and "https://" not in response.text
    for url in links.urls:
        asset = served.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    # the client resolves the dots to /etc/passwd: an undeclared path, so 401 (access.py)
    escape = served.get("/docs/assets/../../etc/passwd")
    assert escape.status_code in (401, 404) and "root:" not in escape.text
    assert served.get("/docs/assets/nope.js").status_code == 404


CHROMIUM_MISSING = not (__import__("shutil").which("chromium")
                        and __import__("shutil").which("chromedriver"))


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM_MISSING, reason="needs chromium and chromium-driver")
def test_docs_render_in_headless_chromium_with_the_network_off(run_copy, tmp_path):
    from test_page import WAIT_S, chromium_driver

    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    proc = start_server(run_copy, port, tmp_path / "server.log")
    # every host name but the server's address fails to resolve: no CDN can be reached
    driver = chromium_driver(extra_args=["--host-resolver-rules=MAP * ~NOTFOUND, "
                                         "EXCLUDE 127.0.0.1"])
    try:
        driver.get(f"http://127.0.0.1:{port}/docs")
        title = WebDriverWait(driver, WAIT_S).until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, "#swagger-ui .information-container .title")))
        assert title.text.startswith("s3t")
        assert driver.find_elements(By.CSS_SELECTOR, "#swagger-ui .opblock-summary-path")
        driver.get(f"http://127.0.0.1:{port}/redoc")
        heading = WebDriverWait(driver, WAIT_S).until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, "redoc .api-info h1")))
        assert heading.text.startswith("s3t")
    finally:
        driver.quit()
        stop_server(proc)


def test_a_busy_port_is_refused_before_the_model_loads(trained, monkeypatch):
    from s3t.engine import S3T

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(S3T, "load", no_load)
    monkeypatch.setenv("S3T_API_TOKEN", TOKEN)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(trained), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --port: 127.0.0.1:{port} is already in use (another server?): stop it or "
        "choose another --port"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("flag, value", [("--log-format", "xml"), ("--log-level", "loud")])
def test_serve_refuses_bad_log_flags(trained, flag, value):
    result = CliRunner().invoke(cli, ["serve", str(trained), flag, value])
    assert result.exit_code == 2 and flag in result.output


def test_a_real_server_writes_json_log_lines(run_copy, tmp_path):
    """`s3t serve --log-format json`: every line on stderr is a JSON object; a request's
    lines carry its id."""
    port, log = free_port(), tmp_path / "server.log"
    proc = start_server(run_copy, port, log, "--log-format", "json")
    try:
        import httpx

        response = httpx.get(f"http://127.0.0.1:{port}/v1/status",
                             headers={"X-Request-ID": "status-check-9"}, timeout=30)
        assert response.headers["x-request-id"] == "status-check-9"
    finally:
        stop_server(proc)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(x["request_id"] == "status-check-9" and x["logger"] == "s3t.access"
               for x in lines)
    assert any("serving" in x["message"] for x in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__]))


def test_timeline_replays_routing_from_commit_times_and_certificates():
    from s3t.run.certificate import Certificate
    from s3t.run.stages import StageRecord
    from s3t.run.timeline import timeline

    def stage(key: str, shard: int, prefix: tuple[int, ...], status: str = "live",
              parent: str | None = None) -> StageRecord:
        return StageRecord(key, shard, prefix, (0,) * len(prefix), parent, status, {}, 1, None)

    t = "2026-12-06T10:00:0{}+00:00".format
    stages = [stage("a", 0, (0,), "erased"), stage("ab", 0, (0, 1), "erased", "a"),
              stage("b", 1, (1,)), stage("q", 1, (1, 0), "erased", "b"),  # q: quarantined
              stage("a2", 0, (0,))]
    created = {"a": t(1), "ab": t(2), "b": t(3), "q": t(4), "a2": t(6)}
    certificate = Certificate(request_id="r1", time=t(5), samples=("s1", "s2"),
                              erased_stages=("a", "ab"), routes_before={},
                              routes_after={"0": None, "1": "b"}, live_shards=1)
    points = timeline(stages, created, [certificate], n_shards=2, slices=2)
    assert [(p["event"], p["capacity"], p["live_shards"], p["deletion_requests"], p["deleted"])
            for p in points] == [
        ("stage-commit", 0.25, 1, 0, 0), ("stage-commit", 0.5, 1, 0, 0),
        ("stage-commit", 0.75, 2, 0, 0),  # q was erased later for damage: never counted
        ("deletion", 0.25, 1, 1, 2), ("stage-commit", 0.5, 2, 1, 2)]
    assert points[0]["time"] < points[-1]["time"]
    only_full = timeline(stages, created, [certificate], 2, 2, servable=lambda depth: depth == 2)
    # a deletion's point is its certificate's routes_after, as recorded (not replayed)
    assert [p["capacity"] for p in only_full] == [0.0, 0.5, 0.5, 0.25, 0.0]
