"""The request body limit: a body over ``max_body_bytes`` is 413, before it is parsed.

A declared ``Content-Length`` over the limit is refused at once, unread. A body sent
without one (chunked) is read up to the limit and refused as soon as it goes over, so the
server never holds more than ``max_body_bytes`` of one request. The accepted body is then
replayed to the application unchanged.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from s3t.service.errors import ApiError, error_response

DELETION_PATHS = ("/v1/deletions", "/v1/dsr")  # their 413 speaks of ids


def check_ids(count: int, limit: int) -> None:
    """413 for a deletion request naming more sample ids and groups than ``--max-ids``."""
    if count > limit:
        raise ApiError(413, f"{count} ids in one deletion request; at most {limit} "
                            "(--max-ids): split them over several requests")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.limit = app, max_body_bytes

    def _too_large(self, path: str) -> str:
        if path.startswith(DELETION_PATHS):
            return (f"request body over {self.limit} bytes (--max-body-bytes): send fewer ids "
                    "per deletion request, or start the server with a larger --max-body-bytes")
        return f"request body over {self.limit} bytes: send fewer inputs per request"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "invalid Content-Length")(scope, receive, send)
                    return
                if declared > self.limit:
                    await error_response(413, self._too_large(scope["path"]))(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await error_response(413, self._too_large(scope["path"]))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        await self.app(scope, replay, send)
