"""A disconnect sent to one node closes the user's connections on every node: three real
``tidings serve`` processes sharing a broker (the shared Redis on a database of this
test's own, flushed first; a ``nats-server`` of the test's own on a free port), real
WebSocket clients. The same scenario for each broker that carries node commands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CONFIG, JWT_SECRET, goodbye_of, make_token
from tests.e2e.test_redis_nodes import fresh_database
from tests.support.nats_server import NatsServer
from tests.support.server import ServerProcess, nodes_sharing
from tests.support.shared_broker import stopped_after
from tests.support.ws import ws_client

pytestmark = pytest.mark.e2e

DISCONNECT_DB: Final = 13
ENV: Final = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": JWT_SECRET}


@pytest.fixture(params=["redis", "nats"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a broker the nodes share: a fresh Redis database, or a NATS of the
    test's own."""
    if request.param == "redis":
        yield fresh_database(DISCONNECT_DB)
        return
    with stopped_after(NatsServer(tmp_path / "nats").start()) as nats_server:
        yield nats_server.url


async def disconnect(http: httpx.AsyncClient, node: ServerProcess, user: str) -> dict[str, Any]:
    response = await http.post(
        f"{node.http_url}/api/disconnect",
        json={"user": user, "reason": "banned"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_disconnect_sent_to_one_node_closes_the_user_on_every_node(
    broker: str, tmp_path: Path
) -> None:
    as_mallory = {"Authorization": f"Bearer {make_token('mallory')}"}
    as_bob = {"Authorization": f"Bearer {make_token('bob')}"}
    with nodes_sharing(broker, 3, tmp_path, config=CONFIG, env=ENV) as servers:
        async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
            mallory = [
                await stack.enter_async_context(ws_client(node.ws_url, headers=as_mallory))
                for node in servers
            ]
            bob = await stack.enter_async_context(ws_client(servers[2].ws_url, headers=as_bob))
            for client in (*mallory, bob):
                await client.result("ping")  # each handshake is authenticated and registered

            answer = await disconnect(http, servers[1], "mallory")
            goodbyes = [await goodbye_of(client) for client in mallory]
            still_there = await bob.result("ping")
            nobody = await disconnect(http, servers[0], "nobody")
    # This node closed its one connection of the user; all three nodes were told.
    assert answer == {"disconnected": 1, "nodes": 3}
    expected = {"push": "disconnect", "code": 4003, "reason": "banned", "reconnect": False}
    assert goodbyes == [(expected, 4003)] * 3
    assert still_there == {}
    assert nobody == {"disconnected": 0, "nodes": 3}
