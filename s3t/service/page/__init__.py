"""The operator's page of ``s3t serve``: ``GET /`` and its two assets under ``/page/``.

A plain HTML page and a small script, shipped inside the package (no build step, no CDN:
it works offline). The script reads the JSON API every few seconds, with the token the
operator types in: ``/v1/status`` (shards, routes, capacity, the retrain job with its
elapsed time and expected end, this server's request rates, errors and p50/p99 latencies,
its last audit and the certificate chain's state), ``/v1/jobs``,
``/v1/history`` (capacity and validation accuracy over time, capacity against deletions;
these three open without the token only with ``--open-status``) and ``/v1/deletions`` (the
deletion log: counts and the client's request ids, never a sample id or text); its "audit
now" button calls ``/v1/audit``. The page and its assets need no token (``access.py``):
they hold no data of the run.

Every response carries a strict Content-Security-Policy: scripts and styles only from this
server, no inline script, no eval, no framing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from s3t.service.errors import ApiError

# The only files served, with their media types: a fixed table, so no path reaches the disk.
ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> bytes:
    """A file of the page, read once from the installed package."""
    return resources.files(__name__).joinpath(name).read_bytes()


@router.get("/")
async def index() -> Response:
    """The operator's page (read-only without a token)."""
    return Response(asset("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/page/{name}")
async def page_asset(name: str) -> Response:
    """The page's script and style sheet."""
    if name not in ASSETS:
        raise ApiError(404, f"no page asset {name!r}: the page's files are "
                            f"{', '.join(sorted(ASSETS))}")
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)
