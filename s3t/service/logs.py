"""The server's log: one line per event, as text or JSON, each carrying its request id.

Every HTTP request gets a request id: the client's ``X-Request-ID`` header when it is a
sane token (1-128 characters of letters, digits and ``._:-``), else a new one. The id is
echoed in the response's ``X-Request-ID`` header and put in a context variable for the
request's lifetime; ``RequestIdFilter`` copies it into every log record made while the
request is handled: its access line, its deletion line, and the lines of work it starts
(``asyncio.to_thread`` and tasks copy the context; retrain jobs keep the id of the request
that triggered them). Lines made outside a request carry ``-``.

``--log-format json`` writes one JSON object per line (``time``, ``level``, ``logger``,
``message``, ``request_id``, and the fields a line adds through ``extra``); ``text`` writes
the same as readable text. Tokens and request bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

request_id: ContextVar[str | None] = ContextVar("s3t_request_id", default=None)
access = logging.getLogger("s3t.access")

# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                          "request_id",
                                                                          "color_message"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str:
    """The client's request id if it is a sane token, else a new one."""
    if value is not None and VALID_ID.fullmatch(value):
        return value
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context it was made in (``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id.get() or "-"
        return True


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call added through ``extra``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get() or "-"}
        line.update(extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL [request id] logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not getattr(record, "request_id", None):
            record.request_id = request_id.get() or "-"
        text = super().format(record)
        fields = {} if getattr(record, "_plain", False) else extras(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def log_config(log_format: str = "text", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and s3t: one handler on stderr in the
    chosen format, with the request id filter; uvicorn's own access log is replaced by
    ``s3t.access`` (one line per request, written by ``RequestIdMiddleware``)."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use {', '.join(LEVELS)}")
    formatter = f"{__name__}.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"
    level = level.upper()
    handler = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"line": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line",
                                "filters": ["request_id"], "stream": "ext://sys.stderr"}},
        "loggers": {"s3t": handler, "uvicorn": handler, "uvicorn.error": handler,
                    "uvicorn.access": {**handler, "level": "WARNING"}},
    }


class RequestIdMiddleware:
    """Take or make the request id, echo it in the response, keep it in the context while
    the request runs, and write the request's access line when it ends."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"),
                     None)
        rid = accepted_request_id(given)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            ms = round((time.perf_counter() - started) * 1000, 3)
            where = f"{client[0]}:{client[1]}" if client else None
            access.info("%s %s %s %d %.1f ms", where or "-", scope["method"], scope["path"], status,
                        ms, extra={"method": scope["method"], "path": scope["path"],
                                   "status": status, "duration_ms": ms, "client": where,
                                   "_plain": True})
            request_id.reset(token)
