"""``s3t serve``: an always-on HTTP service over one run directory.

``create_app(settings)`` builds the FastAPI application (``app.py``); the concurrency
model, and why an acknowledged deletion is never served again, is in ``guard.py``.

| Module | One idea |
| --- | --- |
| ``app.py`` | the application: lifespan (load the run once), middleware, error bodies |
| ``endpoints.py`` | the versioned JSON API (``/v1/...``), health, readiness, metrics |
| ``guard.py`` | the concurrency model: model calls run concurrently; deletions never wait |
| ``batching.py`` | fair dynamic batching of predictions into model calls (large requests in chunks) |
| ``auth.py`` | bearer-token authentication (``hmac.compare_digest``) |
| ``limits.py`` | the request body limit (413) |
| ``metrics.py`` | Prometheus metrics in a registry per app; the run's counters from its ledger |
| ``traffic.py`` | request rates, error counts, p50/p99 latencies of recent requests (the page's) |
| ``logs.py`` | request ids (``X-Request-ID``) in every log line; text or JSON lines |
| ``docs.py`` | ``/docs`` and ``/redoc`` from assets installed with the package (offline) |
| ``history.py``, ``retrainer.py`` | the history the page plots; background retrain jobs and their logs |
| ``page/`` | the operator's page at ``/`` (static HTML + script that read the JSON API) |
| ``settings.py`` | the serve settings, defined and checked once (they make `s3t serve`'s flags) |
| ``dsr.py``, ``subjects.py`` | OpenDSR-shaped erasures; the thread that advances them and calls back |
| ``callback_hosts.py`` | which hosts those callbacks may go to (``--callback-allow``) |
| ``access.py`` | which routes are open, declared once |
| ``errors.py``, ``state.py`` | error shape, status codes; what an app holds (bodies: ``contract.py``) |

Importing this package loads no model (the run is loaded when the app starts) and no web
stack until ``create_app`` is first used: the command line reads ``settings.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s3t.service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from s3t.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
