"""Errors of the HTTP service: one JSON shape, and the status code of each engine failure.

Every error body is ``{"error": KIND, "message": TEXT}`` (plus ``"detail"`` for invalid
requests: pydantic's list of what is wrong where). Nothing in an error repeats request
headers, so a token never appears in a response or a log line.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from starlette.responses import JSONResponse

from s3t.run import IntegrityError, NoLiveShardError, RetrainRunningError
from s3t.run.forget import (
    EmptyRequestError,
    ForgetRequestError,
    RequestKeyConflict,
    UnknownSamplesError,
)
from s3t.run.storage import classify

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


def forget_status(err: ForgetRequestError) -> int:
    """A refused deletion request (nothing was deleted): unknown ids or groups are 404, an
    empty request 400, anything else the engine refuses (validation samples) 422."""
    if isinstance(err, UnknownSamplesError):
        return 404
    if isinstance(err, RequestKeyConflict):  # a client key used before for another body
        return 409
    if isinstance(err, EmptyRequestError):
        return 400
    return 422


def api_error(err: BaseException) -> ApiError | None:
    """The client-facing form of an engine failure, or None for an unexpected one (500)."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, ForgetRequestError):
        return ApiError(forget_status(err), str(err))
    fault = classify(err, None)  # the run's files: read-only, full, missing, damaged, swapped
    if fault is not None:
        return ApiError(fault.http_status, str(fault))
    if isinstance(err, NoLiveShardError):
        return ApiError(503, str(err), headers={"Retry-After": "60"})
    if isinstance(err, BusyError):
        return ApiError(503, str(err), headers={"Retry-After": "1"})
    if isinstance(err, IntegrityError):
        return ApiError(503, f"a stage file failed its integrity check ({err}); run `s3t retrain "
                             "RUN` to rebuild it")
    if isinstance(err, RetrainRunningError):
        return ApiError(409, str(err))
    if isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err)):
        return ApiError(503, f"the run's ledger is busy ({err}): retry", {"Retry-After": "1"})
    if isinstance(err, (ValueError, TypeError)):  # inputs the model cannot take
        return ApiError(422, str(err))
    return None
