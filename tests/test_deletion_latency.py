"""What HTTP deletion latency depends on besides the deletion itself (issue 25, item 7):
not timed here (speed claims are bench/service_io.py's), only the mechanisms checked."""

from __future__ import annotations

import asyncio
import socket

from s3t.cli.serve import bind_port


def test_connections_accepted_by_the_served_socket_turn_nagle_off():
    """uvicorn serves the socket `s3t serve` binds (``loop.create_server(sock=...)``), and
    asyncio sets TCP_NODELAY only on sockets whose proto is TCP. Without it an answer's
    second write (the body after the headers) waits for the client's delayed ACK: about
    40 ms added to a 3 ms deletion."""
    sock = bind_port("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    assert seen and seen[0] != 0


def test_no_route_table_is_built_while_a_deletion_waits(run_copy, monkeypatch):
    """FastAPI builds an included router's route table (pydantic adapters for its parameters
    and answers) at its first match; the server does that at start-up, so the first deletion
    (and prediction, status read) after a start builds nothing on the event loop."""
    import pydantic
    from fastapi.testclient import TestClient
    from test_service import AUTH, TOKEN, samples_in

    from s3t.service import create_app

    built: list[object] = []
    original = pydantic.TypeAdapter.__init__

    def counting(self, *args, **kwargs):
        built.append(args[0] if args else kwargs.get("type"))
        original(self, *args, **kwargs)

    victim = samples_in(run_copy, (0, 1))[0]
    with TestClient(create_app(run_copy, token=TOKEN)) as client:
        monkeypatch.setattr(pydantic.TypeAdapter, "__init__", counting)
        response = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert client.post("/v1/predict", json={"inputs": ["red"]},
                           headers=AUTH).status_code == 200
        assert client.get("/v1/status", headers=AUTH).status_code == 200
    assert built == []


def test_no_dependency_of_an_endpoint_runs_in_a_worker_thread():
    """FastAPI runs a plain ``def`` dependency in its thread pool: two thread hand-offs
    before a request's own work starts, each a wait for a CPU on a busy machine. Every
    dependency of every endpoint is a coroutine function, called on the event loop."""
    import inspect

    from fastapi.routing import APIRoute

    from s3t.service.docs import router as docs
    from s3t.service.dsr import erasures
    from s3t.service.endpoints import generation, router, secured
    from s3t.service.page import router as page

    def dependencies(dependant):
        for sub in dependant.dependencies:
            yield sub
            yield from dependencies(sub)

    routes = [r for group in (router, secured, erasures, generation, page, docs)
              for r in group.routes if isinstance(r, APIRoute)]
    assert any(r.path == "/v1/deletions" for r in routes)
    sync = {(r.path, getattr(d.call, "__name__", repr(d.call))) for r in routes
            for d in dependencies(r.dependant) if not inspect.iscoroutinefunction(d.call)}
    assert sync == set()
