"""The FastAPI application of ``s3t serve``: ``create_app(run_dir, ...)``.

The run is loaded once, by the app's lifespan (``S3T.load``: an interrupted erasure is
finished there, every live stage file is hash-checked, the backbone is loaded and the live
routes are materialised before the first request). The endpoints are in ``endpoints.py``,
the concurrency model in ``guard.py``. Middleware, outermost first: the request id and the
access log line (``logs.py``), metrics (every request counted and timed), bearer
authentication (before anything is read), the body limit (413 before parsing). OpenAPI is at
``/openapi.json``, ``/docs`` and ``/redoc`` (``docs.py``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from s3t.service.auth import BearerAuthMiddleware, protected_paths
from s3t.service.docs import router as docs
from s3t.service.endpoints import generation, router, secured, serves_generation
from s3t.service.errors import ApiError, api_error, error_response
from s3t.service.limits import BodyLimitMiddleware
from s3t.service.logs import RequestIdMiddleware
from s3t.service.metrics import MetricsMiddleware
from s3t.service.page import router as page
from s3t.service.state import Service, Settings

log = logging.getLogger("s3t.service")


def create_app(run_dir: str | Path, *, token: str | None = None, open_predict: bool = False,
               max_batch: int = 32, max_wait_ms: float = 5, workers: int = 1,
               torch_threads: int | None = None, max_inputs: int = 256,
               max_body_bytes: int = 1_000_000, retrain: str = "manual",
               retrain_delay_s: float = 0.0, eval_size: int = 256,
               eval_interval_s: float = 5.0) -> FastAPI:
    """The service of one run directory.

    ``token``: the bearer token that deletions, the deletion listing and audit always need,
    and predict and generate unless ``open_predict``; None leaves every endpoint open (the
    command line allows that only on a loopback host). ``max_batch`` inputs or
    ``max_wait_ms`` bound a dynamic batch of predictions; ``workers`` batches run at once,
    with ``torch_threads`` torch threads (process-wide while the app runs; None leaves
    torch's setting: ``s3t serve`` gives one per call and a call per core, so a call's
    threads never wait for a core another call or the event loop holds); ``max_inputs`` (per predict
    request) and ``max_body_bytes`` bound a request (413 beyond). ``retrain``: the background
    retrain policy, ``manual``, ``eager`` or ``capacity:<threshold>``, after no deletion for
    ``retrain_delay_s`` (``retrainer.py``). ``eval_size`` validation samples are measured at
    most every ``eval_interval_s`` after a change, for ``GET /v1/history``.
    """
    service = Service(Settings(Path(run_dir), token=token, open_predict=open_predict,
                               max_batch=max_batch, max_wait_ms=max_wait_ms,
                               workers=workers, torch_threads=torch_threads,
                               max_inputs=max_inputs, max_body_bytes=max_body_bytes,
                               retrain=retrain, retrain_delay_s=retrain_delay_s,
                               eval_size=eval_size, eval_interval_s=eval_interval_s))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await service.start()
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
    app.include_router(generation, include_in_schema=serves_generation(Path(run_dir)))
    app.include_router(page)  # the operator's page at /
    app.include_router(docs)  # /docs and /redoc, from installed files (offline)
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=token, protected=protected_paths(open_predict))
    app.add_middleware(MetricsMiddleware, metrics=service.metrics,
                       paths=[route.path for route in (*router.routes, *secured.routes,
                                                        *generation.routes)
                              if isinstance(route, APIRoute)])
    app.add_middleware(RequestIdMiddleware)  # outermost: every response and log line has it
    return app


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
        known = api_error(exc)
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
