"""Errors of the HTTP service: one JSON shape, and the status code of each failure (from
``s3t.errors``' table, which the command line reads too, plus the service's own).

Every error body is ``{"error": KIND, "message": TEXT}`` (plus ``"detail"`` for invalid
requests: pydantic's list of what is wrong where). Nothing in an error repeats request
headers, so a token never appears in a response or a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from s3t.errors import describe, redact

KINDS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "too_large", 422: "invalid_request", 500: "internal_error",
         501: "not_implemented", 503: "unavailable", 507: "insufficient_storage"}


class ApiError(Exception):
    """A failure with its HTTP status and a message meant for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 detail: Any = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.detail = status, message, headers, detail


class BusyError(RuntimeError):
    """The service cannot take the request now (queue full, shutting down, routes moving)."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": KINDS.get(status, "error"), "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def api_error(err: BaseException, run_dir: Path | None = None) -> ApiError | None:
    """The client-facing form of a failure, or None for an unexpected one (500, logged).

    The service's own failures first, then ``s3t.errors``' table (the command line reads the
    same one). ``run_dir`` appears in a message as its name only: no response shows a path
    of the server's disk."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, BusyError):
        return ApiError(503, str(err), headers={"Retry-After": "1"})
    failure = describe(err, run_dir)
    if failure is None or failure.status is None:
        return None
    retry = failure.kind.retry_after
    return ApiError(failure.status, redact(failure.message, run_dir),
                    headers=None if retry is None else {"Retry-After": str(retry)})
