"""Presence across tidings nodes sharing Redis: real ``tidings serve`` processes, real
WebSocket clients, the shared Redis on a database of this module's own (flushed first).

The expiry of a dead node's entries is tested at the broker level
(``tests/brokers/test_redis.py``), where the clock is the test's: a node's presence
lifetime is not a server setting.
"""

from __future__ import annotations

import secrets
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.test_redis_nodes import fresh_database
from tests.support.server import ServerProcess, nodes_sharing
from tests.support.ws import Frame, WsClient, ws_client

pytestmark = pytest.mark.e2e

PRESENCE_DB: Final = 13
API_ENV: Final = {"TIDINGS_API_KEY": API_KEY}
CONFIG: Final = """
[namespaces.room]
presence = true
"""


async def presence_push(client: WsClient) -> Frame:
    """Return the next ``join`` or ``leave`` push, skipping pings."""
    while True:
        push = await client.next_push()
        if push.get("push") in ("join", "leave"):
            return push


async def api_presence(http: httpx.AsyncClient, node: ServerProcess, channel: str) -> Frame:
    response = await http.get(
        f"{node.http_url}/api/presence",
        params={"channel": channel},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    clients: Frame = response.json()["clients"]
    return clients


async def test_a_client_sees_joins_and_leaves_made_on_another_node(tmp_path: Path) -> None:
    channel = f"room:{secrets.token_hex(6)}"
    with nodes_sharing(fresh_database(PRESENCE_DB), 2, tmp_path, config=CONFIG, env=API_ENV) as (
        node_a,
        node_b,
    ):
        async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
            watcher = await stack.enter_async_context(ws_client(node_a.ws_url))
            watcher_id = (await watcher.result("connect"))["client"]
            await watcher.result("subscribe", channel=channel)
            async with ws_client(node_b.ws_url) as visitor:
                visitor_id = (await visitor.result("connect"))["client"]
                await visitor.result("subscribe", channel=channel)
                joined = await presence_push(watcher)
                listed = [await api_presence(http, node, channel) for node in (node_a, node_b)]
                over_ws = await visitor.result("presence", channel=channel)
                await visitor.result("unsubscribe", channel=channel)
                left = await presence_push(watcher)
            after = await api_presence(http, node_b, channel)
    everyone = {watcher_id: {"user": ""}, visitor_id: {"user": ""}}
    # The push after the join is the leave: the join was not announced twice.
    assert joined == {"push": "join", "channel": channel, "client": visitor_id, "user": ""}
    assert left == {"push": "leave", "channel": channel, "client": visitor_id, "user": ""}
    assert listed == [everyone, everyone]
    assert over_ws == {"clients": everyone}
    assert after == {watcher_id: {"user": ""}}
