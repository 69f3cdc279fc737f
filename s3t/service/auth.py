"""Bearer-token authentication, checked before a request's body is read.

``Authorization: Bearer TOKEN`` is compared with the configured token by
``hmac.compare_digest`` (constant time). A missing or wrong token is 401 with
``WWW-Authenticate: Bearer``; the token is never logged nor repeated in a response.
With no token configured every endpoint is open: ``s3t serve`` allows that only on a
loopback host.

Which paths need the token is declared once, in ``access.py``; ``protected(path)`` applies
it. It runs as ASGI middleware, ahead of routing and body parsing, so an unauthenticated
client learns nothing from validation errors and cannot make the server buffer a large body.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from s3t.service.errors import error_response


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` as a Bearer token."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, token: str | None, protected: Callable[[str], bool]):
        self.app, self.token, self.protected = app, token, protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or not self.protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if token_matches(header, self.token):
            await self.app(scope, receive, send)
            return
        message = ("missing bearer token: send `Authorization: Bearer TOKEN`" if header is None
                   else "invalid bearer token")
        response = error_response(401, message, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
