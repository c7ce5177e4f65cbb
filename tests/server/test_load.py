"""A node's load for load balancers: ``GET /load`` and the HAProxy agent port
(server/load_agent.py), which says ``drain`` as soon as the node drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.server import free_port
from tidings.errors import ConfigError
from tidings.server.app import TidingsApp
from tidings.server.config import Settings


@pytest.fixture
async def app() -> AsyncIterator[TidingsApp]:
    node = TidingsApp(Settings(agent_port=free_port(), max_connections=400, shutdown_timeout_s=1.0))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def agent_check(app: TidingsApp) -> bytes:
    """Ask the node's agent port as HAProxy does: connect, read to the end."""
    port = app.settings.agent_port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_load_reports_connections_limit_weight_and_draining(app: TidingsApp) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        response = await http.get("/load")
    assert response.status_code == 200
    assert response.json() == {"connections": 0, "limit": 400, "weight": 100, "draining": False}


async def test_agent_answers_up_and_ready_with_the_weight(app: TidingsApp) -> None:
    assert await agent_check(app) == b"up ready 100%\n"


async def test_draining_node_answers_drain_before_it_moves_clients(app: TidingsApp) -> None:
    await agent_check(app)  # HAProxy is watching: the drain waits for its next check
    drain = asyncio.create_task(app.drain())
    assert await agent_check(app) == b"drain\n"
    await drain
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        load = (await http.get("/load")).json()
    assert load["draining"] is True
    assert load["weight"] == 0


async def test_agent_port_in_use_is_one_clear_error() -> None:
    taken = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    node = TidingsApp(Settings(agent_port=port))
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on agent_port 127.0.0.1:{port}"):
            await node.start()
    finally:
        taken.close()
        await taken.wait_closed()


def test_agent_port_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="agent_port must be from 1 to 65535"):
        Settings(agent_port=70_000)


def test_agent_port_cannot_be_the_nodes_own_port() -> None:
    with pytest.raises(ConfigError, match="agent_port must differ from port"):
        Settings(port=8000, agent_port=8000)
