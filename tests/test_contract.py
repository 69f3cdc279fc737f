"""The HTTP contract: every answer typed in /openapi.json, the published JSON Schemas equal the
code's, and the live server checked against its own schema by schemathesis."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live import live_server
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tiny import copy_run

from s3t.contract import RECORDS, AuditReport, Certificate, Status, json_schema, schema_text
from s3t.service import create_app

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def untyped(schema: dict, components: dict) -> bool:
    """Whether a response schema says no more than "some object" (or nothing at all)."""
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if not schema or schema.get("additionalProperties") is True and not schema.get("properties"):
        return True
    return schema.get("type") == "object" and not schema.get("properties") and not isinstance(
        schema.get("additionalProperties"), dict)


def untyped_answers(openapi: dict) -> list[str]:
    components = openapi.get("components", {}).get("schemas", {})
    found = []
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for code, response in operation.get("responses", {}).items():
                if not code.startswith("2"):
                    continue
                for media, content in response.get("content", {}).items():
                    if untyped(content.get("schema", {}), components):
                        found.append(f"{method.upper()} {path} {code} {media}")
    return found


def test_no_answer_in_openapi_is_an_untyped_object(trained, tmp_path):
    openapi = create_app(trained).openapi()
    assert untyped_answers(openapi) == []
    assert "/v1/generate" not in openapi["paths"]  # a classifier run
    assert {"/v1/labels", "/v1/schemas/{name}"} <= set(openapi["paths"])
    error = openapi["components"]["schemas"]["ErrorBody"]
    assert {"error", "message", "detail"} <= set(error["properties"])
    # what the check catches: an endpoint answering a bare dict
    bare = {"paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {
        "schema": {"type": "object", "additionalProperties": True, "title": "Response X"}}}}}}}}}
    assert untyped_answers(bare) == ["GET /x 200 application/json"]
    # a causal-LM run lists generation
    run = copy_run(trained, tmp_path)
    card = json.loads((run / "s3t.json").read_text())
    (run / "s3t.json").write_text(json.dumps({**card, "task": "causal_lm"}))
    assert "/v1/generate" in create_app(run).openapi()["paths"]


def test_the_published_schemas_are_the_code_s():
    on_disk = {p.stem for p in SCHEMAS.glob("*.json")}
    assert on_disk == set(RECORDS), "regenerate: python -m s3t.contract docs/schemas"
    for name in RECORDS:
        assert (SCHEMAS / f"{name}.json").read_text() == schema_text(name), (
            f"docs/schemas/{name}.json is stale: python -m s3t.contract docs/schemas")


def test_the_command_line_prints_the_same_records(trained, tmp_path):
    """`s3t forget|status|audit --json` print the records the API answers with."""
    from typer.testing import CliRunner

    from s3t.cli import app as cli
    from s3t.run import Run

    run = copy_run(trained, tmp_path)
    ledger = Run.open(run, repair=False).ledger
    victim = ledger.conn.execute("SELECT sample_id FROM samples ORDER BY sample_id").fetchone()[0]
    ledger.close()
    printed = {}
    for name, args in (("forget", ["--ids", victim]), ("status", []), ("audit", [])):
        result = CliRunner().invoke(cli, [name, str(run), *args, "--json"])
        assert result.exit_code == 0, result.output
        printed[name] = json.loads(result.stdout)
    certificate = Certificate.model_validate(printed["forget"])
    assert certificate.samples == [victim] and certificate.model_extra == {}
    status = Status.model_validate(printed["status"])
    assert status.deleted == 1 and status.model_extra == {}
    assert AuditReport.model_validate(printed["audit"]).ok


@pytest.fixture(scope="module")
def live(trained, tmp_path_factory):
    run = copy_run(trained, tmp_path_factory.mktemp("contract"))
    with live_server(create_app(run, token=TOKEN, max_inputs=4, max_body_bytes=20_000)) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(live):
    # POST /v1/retrain takes no input and starts a training process: the client tests run it
    return schemathesis.openapi.from_url(f"{live}/openapi.json").exclude(path="/v1/retrain")


def test_schemas_are_served(live):
    assert httpx.get(f"{live}/v1/schemas").json() == {"names": list(RECORDS)}
    for name in ("certificate", "status", "error"):
        assert httpx.get(f"{live}/v1/schemas/{name}").json() == json_schema(name)
    missing = httpx.get(f"{live}/v1/schemas/nothing")
    assert missing.status_code == 404 and "certificate" in missing.json()["message"]


def test_the_live_server_keeps_its_own_schema(api_schema):
    """Every operation, a few generated requests each, valid and invalid: no 5xx, every
    status code documented, every answer matching its schema. (One test driving hypothesis:
    schemathesis' pytest plugin does not run under this pytest.)"""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    seen: dict[str, set[int]] = {}
    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case):
            response = case.call_and_validate(headers=AUTH, checks=checks)
            seen.setdefault(case.operation.label, set()).add(response.status_code)

        conforms()
    assert len(seen) == len(operations) >= 15, sorted(seen)
    assert {200, 422} <= seen["POST /v1/predict"] and 404 in seen["POST /v1/deletions"], seen
