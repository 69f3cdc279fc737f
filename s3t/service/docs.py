"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served
from files installed with the package, so they render offline (no CDN, no web font).

The script and style files come from the ``fastapi-offline`` package (MIT; it ships the
Swagger UI (Apache-2.0) and ReDoc (MIT) bundles); FastAPI's own page builders point at them
under ``/docs/assets/``. Only a fixed table of names is served, so no path reaches the disk.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response

from s3t.service.errors import ApiError

PREFIX = "/docs/assets"
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
          "swagger-ui.css": "text/css; charset=utf-8",
          "redoc.standalone.js": "text/javascript; charset=utf-8",
          "favicon.png": "image/png"}

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> bytes:
    """A documentation asset, read once from the installed ``fastapi_offline`` package."""
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def _app(request: Request) -> FastAPI:
    return request.app


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``."""
    app, root = _app(request), request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{PREFIX}/favicon.png")


@router.get("/docs/oauth2-redirect")
async def swagger_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json``."""
    app, root = _app(request), request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                          redoc_js_url=f"{root}{PREFIX}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{PREFIX}/favicon.png",
                          with_google_fonts=False)


@router.get(PREFIX + "/{name}")
async def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, f"no documentation asset {name!r}: they are "
                            f"{', '.join(sorted(ASSETS))}")
    return Response(asset(name), media_type=ASSETS[name],
                    headers={"Cache-Control": "public, max-age=86400",
                             "X-Content-Type-Options": "nosniff"})
