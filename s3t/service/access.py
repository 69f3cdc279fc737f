"""Which routes answer without the token: the one declaration (README, ``auth.py`` and the
operator's page refer here; a test walks every route of the app against it).

- ``OPEN``: always open. Health and readiness (for probes), the operator's page shell and
  its two assets (they hold no data: the page reads the JSON API, with the token), and the
  API's documentation and contract (``/docs``, ``/redoc``, ``/openapi.json``,
  ``/v1/schemas``: a browser cannot send a bearer token to them, and they describe the API,
  not the run), and the run's public signing key (``/v1/keys``).
- ``STATUS``: open only with ``--open-status`` (a trusted network): status, history, retrain
  jobs and metrics. None of them shows a path of the server's disk.
- ``PREDICT``: open only with ``--open-predict``: predictions, generation and the labels.
- ``TOKEN``: always the token: deletions and their certificates, erasure requests, audit,
  retrain.

A path no route declares needs the token (an unknown path answers 401 before 404). With no
token configured every route is open: ``s3t serve`` allows that only on a loopback host.

``/openapi.json`` says the same, derived from here (``document_security``): each operation
that needs the token under the server's settings lists the bearer scheme in its
``security``, every other one an empty ``security``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

OPEN, STATUS, PREDICT, TOKEN = "open", "status", "predict", "token"

ROUTES: dict[str, str] = {
    "/healthz": OPEN, "/readyz": OPEN, "/": OPEN, "/page/{name}": OPEN,
    "/docs": OPEN, "/docs/oauth2-redirect": OPEN, "/redoc": OPEN, "/openapi.json": OPEN,
    "/docs/assets/{name}": OPEN,
    "/v1/schemas": OPEN, "/v1/schemas/{name}": OPEN,
    "/v1/keys": OPEN,  # the run's public signing key: for verifying certificates offline
    "/v1/status": STATUS, "/v1/history": STATUS, "/v1/jobs": STATUS,
    "/v1/jobs/{job_id}": STATUS, "/metrics": STATUS,
    "/v1/predict": PREDICT, "/v1/generate": PREDICT, "/v1/labels": PREDICT,
    "/v1/deletions": TOKEN, "/v1/deletions/{request_id}": TOKEN, "/v1/audit": TOKEN,
    "/v1/dsr": TOKEN, "/v1/dsr/{subject_request_id}": TOKEN,  # erasure requests
    "/v1/retrain": TOKEN, "/v1/jobs/{job_id}/log": TOKEN,  # a job's child output
}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


PATTERNS = [(_pattern(template), access) for template, access in ROUTES.items()]


def access_of(path: str) -> str:
    """The declared access of a request path (``TOKEN`` for one no route declares)."""
    path = path.rstrip("/") or "/"
    for pattern, access in PATTERNS:
        if pattern.match(path):
            return access
    return TOKEN


SCHEME = "HTTPBearer"
BEARER = {"type": "http", "scheme": "bearer", "description": (
    "`Authorization: Bearer TOKEN` (the server's --token-file or S3T_API_TOKEN). Which "
    "operations need it depends on the server's --open-status and --open-predict: each "
    "operation's `security` says so for this server.")}


def document_security(schema: dict, protected: Callable[[str], bool] | None) -> dict:
    """Mark every operation of an OpenAPI ``schema`` (changed in place and returned) with what
    it needs: the bearer token where ``protected(path)`` says so, nothing elsewhere (an empty
    ``security``, which overrides any default). ``protected`` None: no token is configured,
    so every operation is open and no scheme is declared."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes.pop(SCHEME, None)
    if protected is not None:
        schemes[SCHEME] = dict(BEARER)
    if not schemes:
        schema["components"].pop("securitySchemes")
    for path, operations in schema.get("paths", {}).items():
        needed = protected is not None and protected(path)
        for operation in operations.values():
            if isinstance(operation, dict):
                operation["security"] = [{SCHEME: []}] if needed else []
    return schema


def needs_token(open_predict: bool, open_status: bool) -> Callable[[str], bool]:
    """Whether a request path needs the token under these settings."""
    opened = {OPEN} | ({PREDICT} if open_predict else set()) | ({STATUS} if open_status else set())

    def protected(path: str) -> bool:
        return access_of(path) not in opened

    return protected
