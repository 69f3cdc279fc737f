"""The FastAPI application of ``s3t serve``: ``create_app(settings)``.

The run is loaded once, by the app's lifespan (``S3T.load``: an interrupted erasure is
finished there, every live stage file is hash-checked, the backbone is loaded and the live
routes are materialised before the first request). The endpoints are in ``endpoints.py``,
the concurrency model in ``guard.py``. Middleware, outermost first: CORS (with
``--cors-origin``), the request id and the access log line (``logs.py``), metrics (every
request counted and timed), bearer authentication (before anything is read; which routes
are open: ``access.py``), the body limit (413 before parsing). OpenAPI is at
``/openapi.json``, ``/docs`` and ``/redoc`` (``docs.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import Message, Scope

from s3t.service.access import document_security, needs_token
from s3t.service.auth import BearerAuthMiddleware
from s3t.service.docs import router as docs
from s3t.service.dsr import erasures
from s3t.service.endpoints import generation, router, secured, serves_generation
from s3t.service.errors import ApiError, api_error, error_response
from s3t.service.limits import BodyLimitMiddleware
from s3t.service.logs import RequestIdMiddleware
from s3t.service.metrics import MetricsMiddleware
from s3t.service.page import router as page
from s3t.service.settings import Settings
from s3t.service.state import Service

log = logging.getLogger("s3t.service")


def create_app(settings: Settings | str | Path, **fields: Any) -> FastAPI:
    """The service of one run directory, as ``settings`` say (``settings.py``: each field's
    meaning and bounds). A run directory and ``Settings`` fields by name are a shorthand for
    ``Settings(run_dir, **fields)`` (tests, scripts); either way they are checked once, here."""
    if not isinstance(settings, Settings):
        settings = Settings(Path(settings), **fields)
    elif fields:
        settings = dataclasses.replace(settings, **fields)
    service = Service(settings)  # checks the settings: SettingsError names the flag

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await service.start()
            await warm_routing(app)
        except BaseException:
            await service.stop()
            raise
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="s3t", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=(
        "Exact machine unlearning of a fine-tuned transformer (S3T): predictions from the live "
        "shards' routes, deletions that take effect before they are acknowledged, certificates "
        "and audit."))
    app.state.service = service
    app.include_router(router)
    app.include_router(secured)
    app.include_router(erasures)  # POST /v1/dsr, GET /v1/dsr/{id}
    app.include_router(generation, include_in_schema=serves_generation(settings.run_dir))
    app.include_router(page)  # the operator's page at /
    app.include_router(docs)  # /docs and /redoc, from installed files (offline)
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    protected = needs_token(settings.open_predict, settings.open_status)
    app.add_middleware(BearerAuthMiddleware, token=settings.token, protected=protected)
    schema = app.openapi  # FastAPI's, which caches what it builds

    def openapi() -> dict:  # each operation says whether it needs the token (access.py)
        if app.openapi_schema is None:
            app.openapi_schema = document_security(schema(), None if settings.token is None
                                                   else protected)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(MetricsMiddleware, metrics=service.metrics,
                       paths=[route.path for route in (*router.routes, *secured.routes,
                                                        *erasures.routes, *generation.routes)
                              if isinstance(route, APIRoute)])
    app.add_middleware(RequestIdMiddleware)  # outermost: every response and log line has it
    if settings.cors_origins:  # outermost: a preflight carries no token
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Retry-After", "S3T-Replayed"], max_age=600)
    return app


async def warm_routing(app: FastAPI) -> None:
    """Match routes once before the first request: FastAPI builds an included router's route
    table (a pydantic adapter per parameter and answer) at its first match, which put ~35 ms
    on the event loop in front of the first deletion after a start. A request for a path no
    route has walks every router; it goes to the router itself (no middleware: no access
    line, no metric), and its 404 is dropped."""
    path = "/.s3t-warm-up"
    scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                    "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                    "root_path": "", "query_string": b"", "headers": [], "client": None,
                    "server": None, "app": app}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    with suppress(StarletteHTTPException):  # the 404, raised where the scope names the app
        await app.router(scope, receive, send)


def _validation_message(errors: list) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(x) for x in error.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
        return error_response(422, _validation_message(errors), detail=jsonable_encoder(detail))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}))

    async def engine_error(request: Request, exc: Exception) -> JSONResponse:
        known = api_error(exc, request.app.state.service.settings.run_dir)
        if known is None:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
        return error_response(known.status, known.message, headers=known.headers,
                              detail=known.detail)

    # The failures ``api_error`` maps (by base class; anything else there is a logged 500).
    # ``Exception`` last: Starlette answers it, then re-raises it to the server's log.
    for kind in (ApiError, ValueError, TypeError, RuntimeError, OSError,
                 sqlite3.DatabaseError, Exception):
        app.add_exception_handler(kind, engine_error)
