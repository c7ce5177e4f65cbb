"""The ASGI application mounted in a host Starlette app (examples/embedded_starlette.py),
served by a real uvicorn on a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from examples.embedded_starlette import app

from tests.support.ws import ws_client


@pytest.fixture
async def served_port() -> AsyncIterator[int]:
    # The socket listens before uvicorn starts: early connections wait in the backlog,
    # so there is no start-up moment to wait for.
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield port
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def test_host_route_publishes_in_process_to_a_mounted_websocket_subscriber(
    served_port: int,
) -> None:
    async with ws_client(f"ws://127.0.0.1:{served_port}/realtime/ws") as client:
        subscribed = await client.result("subscribe", channel="orders:feed")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served_port}") as http:
            response = await http.post("/orders", params={"item": "tea"})
        assert response.json() == {"order": {"item": "tea"}, "offset": subscribed["offset"] + 1}
        [publication] = await client.publications(1)
        assert publication["data"] == {"item": "tea"}
        assert publication["channel"] == "orders:feed"


async def test_the_mounted_server_api_and_health_answer_under_the_mount_path(
    served_port: int,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served_port}/realtime") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        published = await http.post("/api/publish", json={"channel": "orders:x", "data": 1})
        assert published.status_code == 200
        history = await http.get("/api/history", params={"channel": "orders:x"})
        assert [p["data"] for p in history.json()["publications"]] == [1]
