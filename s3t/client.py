"""A Python client of ``s3t serve``: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on
httpx, returning the contract's typed records (``s3t/contract.py``).

    from s3t.client import Client
    with Client("http://127.0.0.1:8000", token="my-secret-token") as s3t:
        s3t.predict(["a small domesticated carnivore"]).labels
        certificate = s3t.delete(sample_ids=["wn:02084071"], request_id="ticket-4711")
        s3t.erase("8a7f...", groups=["user-42"], callback_urls=["https://dpo.example/hook"])
        s3t.retrain(); s3t.wait_for_capacity(timeout=600)

Transient failures are retried (``retries`` times, exponential back-off): a connection that
could not be made or was dropped, and 503 with ``Retry-After`` (the server is starting, its
queue is full, no shard serves yet). A deletion always carries a request id, the client's
(``request_id``) or one made here, which the server takes as its idempotency key: a retry
of a deletion the server committed before the connection dropped is answered with the
original certificate and deletes nothing more. Every other answer is final; an error is
raised as ``ServiceError`` with the server's status, kind and message.

Needs only httpx and pydantic: importing it loads no model and no web server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from s3t.contract import (
    AuditReport,
    Certificate,
    GenerateResponse,
    Job,
    Labels,
    PredictResponse,
    Status,
    SubjectRequestStatus,
)

M = TypeVar("M", bound=BaseModel)

#: Failures after which the request may not have reached the server, or its answer was lost.
TRANSIENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
             httpx.RemoteProtocolError, httpx.PoolTimeout)


class ServiceError(Exception):
    """The server refused or failed a request: ``status`` (HTTP), ``error`` (its kind, e.g.
    ``not_found``), ``message`` (what is wrong and what to do), ``detail`` (for 422)."""

    def __init__(self, status: int, error: str, message: str, detail: Any = None,
                 retry_after: float | None = None):
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message = status, error, message
        self.detail, self.retry_after = detail, retry_after


class Unavailable(ServiceError):
    """503 (after the retries): the server cannot serve it now; ``retry_after`` says when."""


class ConnectionFailed(ServiceError):
    """The server could not be reached, or dropped the connection, on every try."""

    def __init__(self, message: str):
        super().__init__(0, "connection_failed", message)


@dataclass(frozen=True)
class Call:
    """One API call: what to send, and which record the answer is."""

    method: str
    path: str
    result: type[BaseModel]
    body: dict[str, Any] | None = None
    unwrap: str | None = None  # the answer's field that holds the record


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _error(response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": "error", "message": response.text[:500] or response.reason_phrase}
    kind = Unavailable if response.status_code == 503 else ServiceError
    return kind(response.status_code, str(body.get("error", "error")),
                str(body.get("message", "")), body.get("detail"), _retry_after(response))


def _parse(call: Call, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error(response)
    body = response.json()
    return call.result.model_validate(body[call.unwrap] if call.unwrap else body)


def _deletion(sample_ids: Sequence[str] | None, groups: Sequence[str] | None,
              request_id: str | None) -> Call:
    if isinstance(sample_ids, str) or isinstance(groups, str):
        raise TypeError("sample_ids and groups are lists of strings, not a string")
    body = {"sample_ids": list(sample_ids or []), "groups": list(groups or []),
            "request_id": request_id or f"client-{uuid.uuid4().hex}"}
    return Call("POST", "/v1/deletions", Certificate, body)


def _erasure(subject_request_id: str, sample_ids: Sequence[str] | None,
             groups: Sequence[str] | None, submitted_time: str | None,
             callback_urls: Sequence[str]) -> Call:
    if isinstance(sample_ids, str) or isinstance(groups, str) or isinstance(callback_urls, str):
        raise TypeError("sample_ids, groups and callback_urls are lists of strings, not a string")
    identities = [{"identity_type": "sample_id", "identity_value": i} for i in sample_ids or ()]
    identities += [{"identity_type": "group", "identity_value": g} for g in groups or ()]
    if not identities:
        raise ValueError("an erasure request names at least one sample id or group")
    submitted = submitted_time or datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = {"subject_request_id": subject_request_id, "submitted_time": submitted,
            "subject_identities": identities, "status_callback_urls": list(callback_urls)}
    return Call("POST", "/v1/dsr", SubjectRequestStatus, body)


class _Base:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.25, max_backoff_s: float = 30.0):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url, self.retries = url.rstrip("/"), retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    def _pause(self, attempt: int, outcome: httpx.Response | Exception) -> float | None:
        """Seconds to wait before trying again, or None when the outcome is final."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, httpx.Response):
            after = _retry_after(outcome)
            if outcome.status_code != 503 or after is None:
                return None
            return min(after, self.max_backoff_s)
        if not isinstance(outcome, TRANSIENT):
            return None
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)

    @staticmethod
    def _done(call: Call, outcome: httpx.Response | Exception) -> Any:
        if isinstance(outcome, Exception):
            raise ConnectionFailed(f"{call.method} {call.path}: {type(outcome).__name__}: "
                                   f"{outcome}") from outcome
        return _parse(call, outcome)


class Client(_Base):
    """A blocking client of one server (module docstring). ``token``: the server's bearer
    token; ``retries``: tries after the first for transient failures."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.25, max_backoff_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(url, token, timeout=timeout, retries=retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout,
                                 transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def call(self, call: Call) -> Any:
        attempt = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = self.http.request(call.method, call.path, json=call.body)
            except httpx.TransportError as err:
                outcome = err
            pause = self._pause(attempt, outcome)
            if pause is None:
                return self._done(call, outcome)
            time.sleep(pause)
            attempt += 1

    def predict(self, inputs: Sequence[str]) -> PredictResponse:
        """Labels and probabilities (in ``labels().labels`` order) of each input."""
        return self.call(Call("POST", "/v1/predict", PredictResponse, {"inputs": list(inputs)}))

    def generate(self, prompt: str, **options: Any) -> GenerateResponse:
        """Generation (causal-LM runs): ``max_new_tokens``, ``sample``, ``temperature``, ``seed``."""
        return self.call(Call("POST", "/v1/generate", GenerateResponse,
                              {"prompt": prompt, **options}))

    def labels(self) -> Labels:
        return self.call(Call("GET", "/v1/labels", Labels))

    def delete(self, sample_ids: Sequence[str] | None = None,
               groups: Sequence[str] | None = None, request_id: str | None = None) -> Certificate:
        """Forget samples and groups exactly; the certificate comes once it is durable and
        out of service. ``request_id`` (made here if not given) makes retries safe."""
        return self.call(_deletion(sample_ids, groups, request_id))

    def deletion(self, request_id: str) -> Certificate:
        """A deletion's certificate, by s3t's request id or the client's."""
        return self.call(Call("GET", f"/v1/deletions/{_segment(request_id)}", Certificate))

    def erase(self, subject_request_id: str, sample_ids: Sequence[str] | None = None,
              groups: Sequence[str] | None = None, *, submitted_time: str | None = None,
              callback_urls: Sequence[str] = ()) -> SubjectRequestStatus:
        """An OpenDSR-shaped erasure of a subject's samples and groups: exact once answered.
        ``subject_request_id`` is its idempotency key (a retry is answered with the same
        request); ``callback_urls`` are POSTed each state change, signed."""
        return self.call(_erasure(subject_request_id, sample_ids, groups, submitted_time,
                                  callback_urls))

    def subject_request(self, subject_request_id: str) -> SubjectRequestStatus:
        """Where an erasure request stands (received, exact, erased, restored)."""
        return self.call(Call("GET", f"/v1/dsr/{_segment(subject_request_id)}",
                              SubjectRequestStatus))

    def status(self) -> Status:
        return self.call(Call("GET", "/v1/status", Status))

    def audit(self) -> AuditReport:
        return self.call(Call("GET", "/v1/audit", AuditReport))

    def retrain(self) -> Job:
        """Start a retrain job (or get the one queued or running)."""
        return self.call(Call("POST", "/v1/retrain", Job, unwrap="job"))

    def job(self, job_id: str) -> Job:
        return self.call(Call("GET", f"/v1/jobs/{_segment(job_id)}", Job))

    def wait_for_capacity(self, target: float = 1.0, *, timeout: float = 600.0,
                          poll_s: float = 1.0) -> Status:
        """Poll the status until capacity reaches ``target`` and no job is queued or running;
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if _restored(status, target):
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(_not_restored(status, target, timeout))
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


class AsyncClient(_Base):
    """The asyncio form of ``Client``: the same methods, awaited."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.25, max_backoff_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(url, token, timeout=timeout, retries=retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout,
                                      transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, call: Call) -> Any:
        attempt = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = await self.http.request(call.method, call.path, json=call.body)
            except httpx.TransportError as err:
                outcome = err
            pause = self._pause(attempt, outcome)
            if pause is None:
                return self._done(call, outcome)
            await asyncio.sleep(pause)
            attempt += 1

    async def predict(self, inputs: Sequence[str]) -> PredictResponse:
        return await self.call(Call("POST", "/v1/predict", PredictResponse,
                                    {"inputs": list(inputs)}))

    async def generate(self, prompt: str, **options: Any) -> GenerateResponse:
        return await self.call(Call("POST", "/v1/generate", GenerateResponse,
                                    {"prompt": prompt, **options}))

    async def labels(self) -> Labels:
        return await self.call(Call("GET", "/v1/labels", Labels))

    async def delete(self, sample_ids: Sequence[str] | None = None,
                     groups: Sequence[str] | None = None,
                     request_id: str | None = None) -> Certificate:
        return await self.call(_deletion(sample_ids, groups, request_id))

    async def deletion(self, request_id: str) -> Certificate:
        return await self.call(Call("GET", f"/v1/deletions/{_segment(request_id)}", Certificate))

    async def erase(self, subject_request_id: str, sample_ids: Sequence[str] | None = None,
                    groups: Sequence[str] | None = None, *, submitted_time: str | None = None,
                    callback_urls: Sequence[str] = ()) -> SubjectRequestStatus:
        return await self.call(_erasure(subject_request_id, sample_ids, groups, submitted_time,
                                        callback_urls))

    async def subject_request(self, subject_request_id: str) -> SubjectRequestStatus:
        return await self.call(Call("GET", f"/v1/dsr/{_segment(subject_request_id)}",
                                    SubjectRequestStatus))

    async def status(self) -> Status:
        return await self.call(Call("GET", "/v1/status", Status))

    async def audit(self) -> AuditReport:
        return await self.call(Call("GET", "/v1/audit", AuditReport))

    async def retrain(self) -> Job:
        return await self.call(Call("POST", "/v1/retrain", Job, unwrap="job"))

    async def job(self, job_id: str) -> Job:
        return await self.call(Call("GET", f"/v1/jobs/{_segment(job_id)}", Job))

    async def wait_for_capacity(self, target: float = 1.0, *, timeout: float = 600.0,
                                poll_s: float = 1.0) -> Status:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if _restored(status, target):
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(_not_restored(status, target, timeout))
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _segment(value: str) -> str:
    """A path segment: ``/`` and the like escaped, so an id never changes the path."""
    return quote(value, safe="")


def _restored(status: Status, target: float) -> bool:
    job = status.retrain.job if status.retrain is not None else None
    busy = status.training == "running" or (job is not None and job.active)
    return status.capacity >= target and not busy


def _not_restored(status: Status, target: float, timeout: float) -> str:
    return (f"capacity {status.capacity:.3f} has not reached {target:g} within {timeout:g} s "
            f"(training: {status.training}); see GET /v1/jobs")
