"""The benchmarks' loopback HTTP client (bench/harness.py): GET and POST, and a kept-alive
connection that the server closed while it sat idle (as uvicorn does after 5 s)."""

from __future__ import annotations

import asyncio

from bench.harness import LoopbackClient


async def _serve_once_per_connection() -> tuple[asyncio.AbstractServer, list[str]]:
    """A server that answers one request per connection, then closes it (keep-alive header
    or not): the client's idle connection is stale on its next use."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = next((int(line.split(":")[1]) for line in head.split("\r\n")
                       if line.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        seen.append(head.split(" ", 2)[0] + " " + head.split(" ", 2)[1])
        body = b'{"ok": true}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def test_client_gets_posts_and_reconnects_after_a_stale_connection() -> None:
    async def scenario() -> list[str]:
        server, seen = await _serve_once_per_connection()
        port = server.sockets[0].getsockname()[1]
        async with server, LoopbackClient(f"http://127.0.0.1:{port}", "t", 1) as http:
            first = await http.get("/v1/status")
            await asyncio.sleep(0.05)  # the server has closed the kept connection by now
            second = await http.post("/v1/predict", json={"inputs": ["x"]})
            assert first.status_code == second.status_code == 200
            assert second.json() == {"ok": True}
        return seen

    assert asyncio.run(scenario()) == ["GET /v1/status", "POST /v1/predict"]
