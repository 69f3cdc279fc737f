"""Which routes are open is declared once (s3t/service/access.py): every route of the app is
declared, and answers 401 without the token exactly where the declaration says, with and
without --open-status and --open-predict; no unauthenticated response shows a path of the
server's disk; --cors-origin lets a browser front end call the API."""

from __future__ import annotations

import itertools
import re

import pytest
from fastapi.testclient import TestClient

from s3t.service import create_app
from s3t.service.access import OPEN, PREDICT, ROUTES, STATUS

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def walk(routes, prefix: str = ""):
    """(path, route) of every route, through included routers (FastAPI >= 0.16x keeps them
    nested; earlier versions flatten them into ``app.routes``)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        else:
            yield prefix + route.path, route


def routes(app) -> list[tuple[str, str]]:
    """(path template, method) of every route the app answers."""
    out = []
    for path, route in walk(app.routes):
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                out.append((path, method))
    return out


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", template)


@pytest.mark.parametrize("open_status, open_predict", list(itertools.product((False, True), repeat=2)))
def test_every_route_is_declared_and_guarded_as_declared(tmp_path, open_status, open_predict):
    # no lifespan: the run is not loaded, so authorised requests answer 503/404/422, but the
    # token is checked before any of that
    app = create_app(tmp_path, token=TOKEN, open_status=open_status, open_predict=open_predict)
    client = TestClient(app, raise_server_exceptions=False)
    seen = routes(app)
    assert {path for path, _ in seen} == set(ROUTES), "declare every route in access.py"
    opened = {OPEN} | ({STATUS} if open_status else set()) | ({PREDICT} if open_predict else set())
    for template, method in seen:
        path = concrete(template)
        anonymous = client.request(method, path, json={} if method == "POST" else None)
        should_open = ROUTES[template] in opened
        assert (anonymous.status_code != 401) == should_open, (method, path, anonymous.text)
        if not should_open:
            assert anonymous.headers["www-authenticate"] == "Bearer"
        authorised = client.request(method, path, headers=AUTH,
                                    json={} if method == "POST" else None)
        assert authorised.status_code != 401, (method, path)
    # an undeclared path needs the token too: 401 before 404
    assert client.get("/v1/nothing-here").status_code == 401
    assert client.get("/v1/nothing-here", headers=AUTH).status_code == 404


@pytest.mark.parametrize("open_status, open_predict", list(itertools.product((False, True), repeat=2)))
def test_openapi_marks_exactly_the_operations_that_need_the_token(tmp_path, open_status,
                                                                   open_predict):
    """/openapi.json says which operations need the bearer token, from the same declaration
    (status, jobs, history and metrics are secured unless --open-status)."""
    app = create_app(tmp_path, token=TOKEN, open_status=open_status, open_predict=open_predict)
    schema = TestClient(app, raise_server_exceptions=False).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    opened = {OPEN} | ({STATUS} if open_status else set()) | ({PREDICT} if open_predict else set())
    documented = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            secured = operation["security"] == [{"HTTPBearer": []}]
            assert secured == (ROUTES[path] not in opened), (method, path, operation["security"])
            assert secured or operation["security"] == [], (method, path)
            documented += 1
    assert documented >= 15
    assert ("/v1/status" in schema["paths"]) and (
        schema["paths"]["/v1/status"]["get"]["security"] == ([] if open_status
                                                             else [{"HTTPBearer": []}]))


def test_openapi_without_a_token_declares_every_operation_open(tmp_path):
    schema = create_app(tmp_path).openapi()
    assert "securitySchemes" not in schema.get("components", {})
    assert all(op["security"] == [] for ops in schema["paths"].values() for op in ops.values())


def test_the_default_opens_only_health_page_and_docs(tmp_path):
    client = TestClient(create_app(tmp_path, token=TOKEN), raise_server_exceptions=False)
    for path in ("/v1/status", "/v1/jobs", "/v1/history", "/metrics", "/v1/jobs/j1",
                 "/v1/deletions", "/v1/audit"):
        assert client.get(path).status_code == 401, path
    for path in ("/healthz", "/", "/page/page.js", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_no_unauthenticated_response_shows_a_path(trained):
    with TestClient(create_app(trained, token=TOKEN, open_status=True, open_predict=True)) as client:
        for template, method in routes(client.app):
            path = concrete(template)
            response = client.request(method, path, json={"inputs": ["red"]}
                                      if template == "/v1/predict" else {} if method == "POST"
                                      else None)
            text = response.text
            assert str(trained) not in text and str(trained.resolve()) not in text, path
            assert not re.search(r'"/(tmp|home|srv|work|root|var)/', text), (path, text[:300])
        status = client.get("/v1/status").json()
        assert status["run_dir"] == trained.name and status["live_shards"] == 2


def test_cors_origin_lets_a_browser_front_end_call_the_api(tmp_path):
    origin = "https://ops.example.com"
    client = TestClient(create_app(tmp_path, token=TOKEN, cors_origins=(origin,)),
                        raise_server_exceptions=False)
    preflight = client.options("/v1/predict", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    answer = client.get("/healthz", headers={"Origin": origin})
    assert answer.headers["access-control-allow-origin"] == origin
    other = client.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other.headers
    # without --cors-origin, no browser origin is allowed
    plain = TestClient(create_app(tmp_path, token=TOKEN), raise_server_exceptions=False)
    assert "access-control-allow-origin" not in plain.get(
        "/healthz", headers={"Origin": origin}).headers
